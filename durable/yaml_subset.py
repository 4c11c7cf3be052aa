"""Decoding the YAML that a YAML 1.2 parser reads exactly as PyYAML does, 10x faster.

`formats.decode_yaml` is PyYAML's safe loader (libyaml's parser, Python's
constructors), strict about duplicate keys and alias bombs. It builds every node in
Python: 4-5 s for a workflow of 100,000 tasks. `yaml_rs` (Rust) builds the same data
in 0.35 s, but it reads YAML 1.2 and PyYAML reads YAML 1.1: `on`, `010`, `1e3`,
`12:30` or `2001-12-14` mean different things to them, and each accepts a few
documents the other refuses. So `decode` answers only for a file that a few cheap
checks prove to be in the part of YAML where both agree, and says `UNSURE`
otherwise, for the strict loader to decide (with its own error messages). Outside
that part:

- anchors, aliases, tags, merge keys, directives, complex (`?`) keys, several
  documents, tabs, carriage returns, control characters, a BOM inside the file,
  the line breaks of YAML 1.1 (NEL, LS, PS), and a file that does not end with a
  line break (where the two differ on a final block scalar);
- a plain scalar that either parser could read as anything but text, unless it is
  a plain decimal integer of at most 18 digits (`0`, `-12`) or decimal fraction
  (`1.5`), which both read alike; also `yes`/`no`/`on`/`off` and `=` anywhere, and
  keys that are not text or a number;
- `:` followed by a flow indicator (`{a:}`), which libyaml refuses;
- a block scalar (`|`, `>`) with no content, or with an explicit indentation;
- deep block nesting (100 columns of indentation, 8 compact `- ` on a line), so
  that the parser's recursion stays far from the end of its stack (yaml_rs crashed
  the process at 12,000 levels).

The checks read the file's bytes with C-speed methods (`translate`, `split`, `in`)
rather than a regular expression over every character: about 0.1 s for 100,000
tasks. yaml_rs itself refuses duplicate keys and deep flow nesting (either makes
the answer `UNSURE`). A file that needs an alias or a tag simply takes the strict
path, as every file did before. The patterns below are compiled on first use (by
`re`'s cache), not on import, so that `durable run` starts without them.
`tests/unit/test_yaml_subset.py` holds both parsers to this on generated documents.
"""

from __future__ import annotations

import re
from typing import Any, Final

UNSURE: Final = object()

# Bytes to one class each, so that `split()` cuts the file into candidate scalars and
# `set()` leaves a few hundred distinct shapes to look at:
# - digits: `0` stays, 1-9 become `1` (what a safe number needs to know);
# - letters: lower case; `+` becomes `-` (a sign either way);
# - `.`, `_`, `:`, `-`, `=`, `<`, `~`, `?`, `&`, `*`, `!`, `%` and non-ASCII: themselves
#   (non-ASCII as `w`), parts of a scalar;
# - flow indicators `[]{},` become \x0b (whitespace to `split`, but findable after `:`);
# - control characters, tab and CR become \x00, to be found in one search;
# - everything else (space, quotes, `#`, `/`, `$`...) ends a scalar.
_SHAPES = bytearray(b" " * 256)
_SHAPES[:0x20] = bytes(0x20)
_SHAPES[0x7F:] = b"\x00" + b"w" * 0x80
_SHAPES[ord("a") : ord("z") + 1] = _SHAPES[ord("A") : ord("Z") + 1] = b"abcdefghijklmnopqrstuvwxyz"
_SHAPES[ord("0") : ord("9") + 1] = b"0111111111"
for _char in b"\n.:_-=<~?&*!%":
    _SHAPES[_char] = _char
for _char in b"[]{},":
    _SHAPES[_char] = 0x0B
_SHAPES[ord("+")] = ord("-")
SHAPES: Final = bytes(_SHAPES)
del _SHAPES, _char

# A scalar (as shaped above, sign included) that both parsers read as the same number.
_SAFE_NUMBER = rb"-?(?:0|1[01]{0,17})(?:\.[01]{1,17})?|[01]{1,18}(?:\.[01]{1,18}){2,}"
# A scalar that one of them might read as a number or a date: it starts (after a sign)
# with a digit, `.` or `_`, and holds only what numbers, dates and times are made of
# (`0x` hex, `.inf` and `.nan` included).
_NUMBER_LIKE = rb"-?(?:0x.*|\.(?:inf|nan)|[01._][01._:\-eobtz]*)"
# Without a digit, only these are numbers to either parser (`._` is PyYAML's, an error).
_NO_DIGITS = rb"\.(?:inf|nan)|\._+(?:e-)?"
# PyYAML reads these as booleans; yaml_rs as text (`=` is PyYAML's `value` tag, an error).
_YAML11_WORDS = (b"yes", b"no", b"on", b"off", b"=")
# Keys (before their `:`) that are not text to yaml_rs: the strict loader refuses them.
_KEY_WORDS = (b"", b"~", b"true", b"false", b"null")
# `&`, `*` and `!` after one of these start an anchor, an alias or a tag.
_STRUCTURE_AFTER = (b" ", b"\n", b"[", b"{", b",", b":")
# The end of a line that may open a block scalar; group 1 is an explicit indentation.
_BLOCK_HEADER = rb"[|>][-+]?([0-9]?)[-+]?[ ]*(?:#[^\n]*)?\n"
_DEEP = rb"-[ ]+-[ ]+-[ ]+-[ ]+-[ ]+-[ ]+-[ ]+-[ ]"
_UNICODE = (
    rb"\xc2[\x80-\x9f]",  # C1 controls, NEL among them (a line break in YAML 1.1)
    rb"\xe2\x80[\xa8\xa9]",  # LS, PS: line breaks in YAML 1.1 only
    rb"\xef(?:\xbb\xbf|\xbf[\xbe\xbf])",  # a BOM inside, U+FFFE, U+FFFF
)


def decode(data: bytes) -> Any:
    """The file's data, decoded by yaml_rs, or `UNSURE` if PyYAML might read it otherwise.

    `data` is UTF-8 (checked by `formats.utf8`). `UNSURE` also when yaml_rs is not
    installed or refuses the file: the strict loader then says why.
    """
    recheck = _needs_recheck(data)
    if recheck is None:
        return UNSURE
    try:
        import yaml_rs
    except ImportError:  # a dependency, but the strict loader can do without it
        return UNSURE
    try:
        value = yaml_rs.loads(data.decode("utf-8"), parse_datetime=False)
    except Exception:  # a duplicate key, or YAML that yaml_rs refuses: the strict loader words it
        return UNSURE
    except BaseException as exc:  # a panic in the extension (pyo3's PanicException)
        if type(exc).__name__ != "PanicException":
            raise
        return UNSURE
    if recheck and not _words_and_keys_agree(value):
        return UNSURE
    return value


def _needs_recheck(data: bytes) -> bool | None:
    """None if the file is outside the agreed part; else whether the decoded data must be
    rechecked (`_words_and_keys_agree`) because the text holds a word or key to look at.

    Single bytes are looked for first: `in` finds one with memchr, ten times faster than
    a longer pattern.
    """
    if data and not data.endswith(b"\n"):
        return None
    if not data.isascii() and any(re.search(pattern, data) for pattern in _UNICODE):
        return None
    if b"\n" + b" " * 100 in data or (b"- -" in data and re.search(_DEEP, data)):
        return None
    for char in (b"&", b"*", b"!"):
        if char in data and (
            data.startswith(char) or any(before + char in data for before in _STRUCTURE_AFTER)
        ):
            return None
    if (b"|" in data or b">" in data) and not _block_scalars_have_content(data):
        return None
    shaped = data.translate(SHAPES)
    # Control characters; `:` before a flow indicator, which libyaml refuses and
    # yaml_rs reads (`{a:}` as a mapping).
    if b"\x00" in shaped or b":\x0b" in shaped or (b"?" in data and b":?" in shaped):
        return None
    recheck = False
    for word in set(shaped.split()):
        if word == b"?" or b"<<" in word:  # a complex key, a merge key
            return None
        if (word in (b"---", b"...") or word[0] == ord("%")) and (
            not _one_document(data) or b"\n%" in data or data.startswith(b"%")
        ):
            return None  # several documents, or a directive
        scalar = word.lstrip(b":")  # `"a":1` in flow: the value after a JSON-like key
        if not scalar:  # `: x`, `[a]: x`, `null : x`: a key that is null or a collection
            recheck = True
            continue
        if scalar.endswith(b":"):  # a key
            scalar = scalar[:-1]
            recheck = recheck or scalar in _KEY_WORDS
        recheck = recheck or scalar in _YAML11_WORDS
        number = scalar[1:] if scalar.startswith(b"-") else scalar
        if (
            number[:1] in (b"0", b"1", b".", b"_")
            and re.fullmatch(_NUMBER_LIKE, scalar)
            and not re.fullmatch(_SAFE_NUMBER, scalar)
            and (b"0" in number or b"1" in number or re.fullmatch(_NO_DIGITS, number))
        ):
            return None
    return recheck


def _block_scalars_have_content(data: bytes) -> bool:
    """Whether each line that may open a block scalar (`|`, `>-`... at its end) is followed
    by a line indented past its keys and `- `: yaml_rs reads an empty block scalar as a
    line break, PyYAML as empty text. An explicit indentation (`|2`) says no too."""
    for header in re.finditer(_BLOCK_HEADER, data):
        if header.group(1):
            return False
        start = data.rfind(b"\n", 0, header.start()) + 1
        line = data[start : header.start()]
        opened = len(line) - len(line.lstrip(b" -"))  # spaces and `- ` before the first key
        end = data.find(b"\n", header.end())
        following = data[header.end() : end if end != -1 else len(data)]
        if not following.strip() or len(following) - len(following.lstrip(b" ")) <= opened:
            return False
    return True


def _one_document(data: bytes) -> bool:
    """No document marker (`---`, `...`) but one `---` opening the file, perhaps after
    comments: yaml_rs returns a list for several documents, PyYAML refuses them."""
    found = [
        start
        for marker in (b"---", b"...")
        for start in _line_starts(data, marker)
        if data[start + 3 : start + 4] in (b"", b" ", b"\n")
    ]
    if not found:
        return True
    if len(found) > 1 or data[found[0] : found[0] + 3] != b"---":
        return False
    before = data[: found[0]].splitlines()
    return all(not line.strip() or line.lstrip().startswith(b"#") for line in before)


def _line_starts(data: bytes, marker: bytes) -> list[int]:
    starts = [0] if data.startswith(marker) else []
    position = data.find(b"\n" + marker)
    while position != -1:
        starts.append(position + 1)
        position = data.find(b"\n" + marker, position + 1)
    return starts


def _words_and_keys_agree(value: Any) -> bool:
    """For a text that holds `on`, `yes`, `true:`... somewhere: no text value is a YAML 1.1
    boolean or `=`, and every key is text or a number (what the strict loader allows)."""
    import msgspec

    try:
        encoded = msgspec.json.encode(value)  # refuses keys that are not text or numbers
    except Exception:
        return False
    lowered = encoded.lower()
    return not any(b'"' + word + b'"' in lowered for word in _YAML11_WORDS)
