"""The built-in tools, driven through real runs: echo, sleep, shell and http.

Shell tests run real programs (the test's own Python, `sh`, `sleep`); http tests
talk to a real `ThreadingHTTPServer` on 127.0.0.1 started inside the test and shut
down at its end. Every run writes a real SQLite journal under `tmp_path`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from durable import builtins, runner
from durable.runner import RunResult
from durable.spec import Task, Workflow

PYTHON = sys.executable
# asyncio's own loop, and uvloop's, which `durable run` uses where it is installed.
LOOPS = ["asyncio", "uvloop"]
# Prints its own argv (after the program) as JSON: shows how many words a value became.
SHOW_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


@pytest.fixture(autouse=True)
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run puts its base_dir on `sys.path`; keep that from leaking between tests."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def run_workflow(
    tmp_path: Path,
    tasks: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    loop: str = "asyncio",
) -> RunResult:
    """Run `tasks` on asyncio's own loop, or on uvloop's (`loop="uvloop"`), the one
    `durable run` uses where it is installed."""
    factory = pytest.importorskip("uvloop").new_event_loop if loop == "uvloop" else None
    workflow = Workflow(name="builtins", params=params or {}, tasks=[Task(**t) for t in tasks])
    with asyncio.Runner(loop_factory=factory) as on_loop:
        return on_loop.run(runner.arun(workflow, db=tmp_path / "journal.db", base_dir=tmp_path))


def run_one(tmp_path: Path, tool: str, input: Any, **task: Any) -> RunResult:
    return run_workflow(tmp_path, [{"id": "t", "tool": tool, "input": input, **task}])


# echo and sleep


@pytest.mark.parametrize(
    "value",
    [{"a": 1, "b": [1, 2], "c": {"d": None}}, [1, "two", 3.0], "text", 42, True],
    ids=["mapping", "list", "string", "int", "bool"],
)
def test_echo_returns_its_input(tmp_path: Path, value: Any) -> None:
    result = run_one(tmp_path, "echo", value)
    assert result.status == "succeeded"
    assert result.tasks["t"].output == value


def test_echo_returns_a_mapping_as_a_dict() -> None:
    output = asyncio.run(builtins.echo(**{"x": 1, "y": "z"}))
    assert type(output) is dict
    assert output == {"x": 1, "y": "z"}


def test_echo_of_no_input_returns_null(tmp_path: Path) -> None:
    # echo's docstring: "a mapping input as a dict, anything else as is"; null is
    # "anything else", and the README's built-ins table says: null for an empty input.
    result = run_one(tmp_path, "echo", None)
    assert result.status == "succeeded"
    assert result.tasks["t"].output is None


def test_echo_substitutes_references(tmp_path: Path) -> None:
    result = run_workflow(
        tmp_path,
        [
            {"id": "a", "tool": "echo", "input": {"items": [1, 2, 3]}},
            {
                "id": "b",
                "tool": "echo",
                "input": {"all": "${a.output.items}", "p": "n=${params.n}"},
            },
        ],
        params={"n": 7},
    )
    assert result.tasks["b"].output == {"all": [1, 2, 3], "p": "n=7"}


def test_sleep_returns_result(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_one(tmp_path, "sleep", {"seconds": 0.05, "result": {"done": [1, 2]}})
    assert result.status == "succeeded"
    assert result.tasks["t"].output == {"done": [1, 2]}
    assert time.monotonic() - started >= 0.05


def test_sleep_without_result_returns_null(tmp_path: Path) -> None:
    result = run_one(tmp_path, "sleep", {"seconds": 0})
    assert result.status == "succeeded"
    assert result.tasks["t"].output is None


# shell: forms and output


def test_shell_argument_list(tmp_path: Path) -> None:
    result = run_one(tmp_path, "shell", {"command": [PYTHON, "-c", SHOW_ARGV, "a b", "c"]})
    assert result.status == "succeeded"
    output = result.tasks["t"].output
    assert set(output) == {"returncode", "stdout", "stderr"}
    assert output["returncode"] == 0
    assert json.loads(output["stdout"]) == ["a b", "c"]
    assert output["stderr"] == ""


def test_shell_string_command_is_split_like_a_shell_would(tmp_path: Path) -> None:
    command = f"{shlex.quote(PYTHON)} -c {shlex.quote(SHOW_ARGV)} one 'two words' \"three\""
    result = run_one(tmp_path, "shell", {"command": command})
    assert result.status == "succeeded"
    assert json.loads(result.tasks["t"].output["stdout"]) == ["one", "two words", "three"]


def test_shell_bare_string_input_is_the_command(tmp_path: Path) -> None:
    result = run_one(tmp_path, "shell", "printf '%s|' hello 'big world'")
    assert result.status == "succeeded"
    assert result.tasks["t"].output["stdout"] == "hello|big world|"


def test_shell_captures_stderr_and_takes_stdin_env_and_cwd(tmp_path: Path) -> None:
    code = (
        "import os, sys; data = sys.stdin.read(); "
        "sys.stderr.write('err:' + data); print(os.environ['DURABLE_TEST_VAR'], os.getcwd())"
    )
    work = tmp_path / "work dir"
    work.mkdir()
    result = run_one(
        tmp_path,
        "shell",
        {
            "command": [PYTHON, "-c", code],
            "stdin": "piped",
            "env": {"DURABLE_TEST_VAR": "from-env"},
            "cwd": str(work),
        },
    )
    assert result.status == "succeeded"
    output = result.tasks["t"].output
    assert output["stderr"] == "err:piped"
    assert output["stdout"].split(" ", 1) == ["from-env", f"{work}\n"]


def test_shell_non_zero_exit_fails_the_task_with_the_exit_code(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('first\\nboom happened\\n'); sys.exit(3)"
    result = run_one(tmp_path, "shell", {"command": [PYTHON, "-c", code]})
    assert result.status == "failed"
    task = result.tasks["t"]
    assert task.state == "failed"
    assert "exited with 3" in (task.error or "")
    assert "boom happened" in (task.error or "")


def test_shell_check_false_keeps_a_non_zero_exit_a_success(tmp_path: Path) -> None:
    code = "import sys; print('out'); sys.exit(5)"
    result = run_one(tmp_path, "shell", {"command": [PYTHON, "-c", code], "check": False})
    assert result.status == "succeeded"
    assert result.tasks["t"].output == {"returncode": 5, "stdout": "out\n", "stderr": ""}


def test_shell_unknown_program_fails_with_its_name(tmp_path: Path) -> None:
    result = run_one(tmp_path, "shell", {"command": ["durable-no-such-program-xyz", "arg"]})
    assert result.tasks["t"].state == "failed"
    assert "durable-no-such-program-xyz" in (result.tasks["t"].error or "")


def test_shell_missing_cwd_is_named_not_taken_for_a_missing_program(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    result = run_one(tmp_path, "shell", {"command": ["true"], "cwd": missing})
    assert result.tasks["t"].error == (
        f"ToolFailed: shell: cannot run 'true' in cwd '{missing}': No such file or directory"
    )


def test_shell_empty_command_fails(tmp_path: Path) -> None:
    result = run_one(tmp_path, "shell", {"command": []})
    assert result.tasks["t"].state == "failed"
    assert "empty command" in (result.tasks["t"].error or "")


def test_shell_command_from_a_whole_reference_to_a_list_keeps_the_list(tmp_path: Path) -> None:
    # README, "References": a whole-value reference keeps its type; shell takes an
    # argument list. So "${params.argv}" is not split into words first (which would
    # wrap the list in another list and make the argv the one word "['printf', ...]").
    result = run_workflow(
        tmp_path,
        [{"id": "t", "tool": "shell", "input": {"command": "${params.argv}"}}],
        params={"argv": ["printf", "%s", "hi"]},
    )
    assert result.tasks["t"].error is None
    assert result.tasks["t"].output["stdout"] == "hi"


# shell: substituted values are data, never shell syntax

HOSTILE = [
    "x; touch pwned1",
    "$(touch pwned2)",
    "`touch pwned3`",
    "x && touch pwned4",
    "x | touch pwned5",
    "> pwned6",
    "x\ntouch pwned7",
    'it\'s a "quoted" value with  spaces',
    "'; touch pwned8; '",
    "--help",
]


def _no_pwned_files(*folders: Path) -> None:
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("pwned")) == []


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with tmp_path as the working directory, so a stray `touch pwned` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _with_param(command: str | list[str], name: str) -> str | list[str]:
    if isinstance(command, str):
        return command.replace("params.v}", f"params.{name}}}")
    return [word.replace("params.v}", f"params.{name}}}") for word in command]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (f"{shlex.quote(PYTHON)} -c {shlex.quote(SHOW_ARGV)} ${{params.v}}", "{v}"),
        (f"{PYTHON} -c {shlex.quote(SHOW_ARGV)} pre-${{params.v}}", "pre-{v}"),
        (f'{PYTHON} -c {shlex.quote(SHOW_ARGV)} "say ${{params.v}}"', "say {v}"),
        (f"{PYTHON} -c {shlex.quote(SHOW_ARGV)} 'say ${{params.v}}'", "say {v}"),
        ([PYTHON, "-c", SHOW_ARGV, "${params.v}"], "{v}"),
        ([PYTHON, "-c", SHOW_ARGV, "pre-${params.v}"], "pre-{v}"),
    ],
    ids=[
        "string",
        "string-embedded",
        "string-double-quoted",
        "string-single-quoted",
        "list",
        "list-embedded",
    ],
)
def test_shell_substituted_value_is_one_literal_argument(
    in_tmp: Path, command: Any, expected: str
) -> None:
    # One task per hostile value, all in one run; each value is its own param.
    params = {f"v{n}": value for n, value in enumerate(HOSTILE)}
    tasks = [
        {"id": f"t{n}", "tool": "shell", "input": {"command": _with_param(command, f"v{n}")}}
        for n in range(len(HOSTILE))
    ]
    result = run_workflow(in_tmp, tasks, params=params)
    for n, value in enumerate(HOSTILE):
        task = result.tasks[f"t{n}"]
        assert task.state == "succeeded", (value, task.error)
        assert json.loads(task.output["stdout"]) == [expected.format(v=value)], value
    _no_pwned_files(in_tmp)


@pytest.mark.parametrize("value", ["x; touch pwned1", "$(touch pwned2)", "`touch pwned3`"])
def test_shell_substituted_value_is_not_run_by_a_real_shell_program(
    in_tmp: Path, value: str
) -> None:
    # printf through no shell at all: the value comes back byte for byte.
    result = run_workflow(
        in_tmp,
        [{"id": "t", "tool": "shell", "input": "printf '%s\\n' ${params.v}"}],
        params={"v": value},
    )
    assert result.status == "succeeded"
    assert result.tasks["t"].output["stdout"] == value + "\n"
    _no_pwned_files(in_tmp)


def test_shell_value_from_a_task_output_is_one_argument(in_tmp: Path) -> None:
    result = run_workflow(
        in_tmp,
        [
            {"id": "a", "tool": "echo", "input": {"v": "x; touch pwned1 && $(touch pwned2)"}},
            {
                "id": "b",
                "tool": "shell",
                "input": f"{PYTHON} -c {shlex.quote(SHOW_ARGV)} ${{a.output.v}}",
            },
        ],
    )
    assert result.status == "succeeded"
    assert json.loads(result.tasks["b"].output["stdout"]) == ["x; touch pwned1 && $(touch pwned2)"]
    _no_pwned_files(in_tmp)


def test_shell_by_module_reference_also_keeps_a_value_one_argument(in_tmp: Path) -> None:
    # Were `durable.builtins:shell` resolved without shell's `prepare`, the command
    # would be substituted first and split afterwards: the value's spaces would become
    # argv syntax, and with `find -exec` that is command execution.
    (in_tmp / "target.txt").write_text("")
    result = run_workflow(
        in_tmp,
        [
            {
                "id": "t",
                "tool": "durable.builtins:shell",
                "input": {"command": "find . -maxdepth 1 -name ${params.pattern}", "check": False},
            }
        ],
        params={"pattern": "target.txt -exec touch pwned_find ;"},
    )
    assert result.tasks["t"].state == "succeeded"
    _no_pwned_files(in_tmp)


# shell: cancellation and timeouts


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


def _running(argv: list[str]) -> list[int]:
    """Pids of live processes with exactly this argv (Linux /proc)."""
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == wanted:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("loop", LOOPS)
def test_shell_timeout_kills_the_process(in_tmp: Path, loop: str) -> None:
    pid_file = in_tmp / "child.pid"
    plain = ["sleep", "30.0417"]  # an unusual duration, to find this very process
    started = time.monotonic()
    result = run_workflow(
        in_tmp,
        [
            {"id": "plain", "tool": "shell", "input": " ".join(plain), "timeout": 0.3},
            {
                "id": "tracked",
                "tool": "shell",
                "input": {"command": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]},
                "timeout": 0.3,
            },
        ],
        loop=loop,
    )
    elapsed = time.monotonic() - started
    pid = _wait_for_pid(pid_file)
    try:
        assert elapsed < 5
        for task_id in ("plain", "tracked"):
            assert result.tasks[task_id].state == "failed"
            assert "timed out" in (result.tasks[task_id].error or "")
        assert not _alive(pid)
        assert _running(plain) == []
    finally:
        for leftover in [pid, *_running(plain)]:
            if _alive(leftover):
                os.kill(leftover, 9)


@pytest.mark.parametrize("loop", LOOPS)
def test_shell_timeout_is_not_held_up_by_a_grandchild(in_tmp: Path, loop: str) -> None:
    """A timed-out command's grandchildren cannot keep its task waiting.

    `sh -c` forks `sleep`, which inherits the stdout pipe. Killing only `sh` would
    leave `sleep` holding it, and waiting for the pipes' ends would last as long as
    the grandchild: 30 s here, against a timeout of 0.3 s.
    """
    pid_file = in_tmp / "grandchild.pid"
    started = time.monotonic()
    result = run_workflow(
        in_tmp,
        [
            {
                "id": "t",
                "tool": "shell",
                "input": {"command": ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"]},
                "timeout": 0.3,
            }
        ],
        loop=loop,
    )
    elapsed = time.monotonic() - started
    pid = _wait_for_pid(pid_file)
    try:
        assert result.tasks["t"].state == "failed"
        assert "timed out" in (result.tasks["t"].error or "")
        assert elapsed < 10, f"a 0.3 s timeout took {elapsed:.1f} s"
    finally:
        if _alive(pid):
            os.kill(pid, 9)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("exit_seen_by", ["pidfd", "thread"])
def test_shell_ends_with_its_program_not_with_a_background_child_that_let_go_of_its_output(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, loop: str, exit_seen_by: str
) -> None:
    """`sleep 5 >/dev/null 2>&1 &` holds neither pipe, so `sh` exiting ends the task.

    On uvloop the program used to hold a second, inheritable copy of each pipe's
    writing end, under another descriptor number, which the background `sleep`
    inherited and kept: the task lasted the 5 s of the sleep, and a `timeout`
    shorter than that failed it. Where there is no pidfd (macOS, Linux before
    5.3), the exit is awaited in a thread instead.
    """
    if exit_seen_by == "thread":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    pid_file = in_tmp / "background.pid"
    background = f"sleep 5 >/dev/null 2>&1 & echo $! > {pid_file}; echo started"
    tasks = [
        {
            "id": "t",
            "tool": "shell",
            "input": {"command": ["sh", "-c", background], "progress": True},
            "timeout": 4,
        }
    ]
    started = time.monotonic()
    result = run_workflow(in_tmp, tasks, loop=loop)
    elapsed = time.monotonic() - started
    pid = _wait_for_pid(pid_file)
    try:
        assert result.tasks["t"].state == "succeeded", result.tasks["t"].error
        assert result.tasks["t"].output["stdout"] == "started\n"
        assert elapsed < 2, f"the task waited {elapsed:.1f} s for a background sleep"
        assert _alive(pid), "the task killed a background child it had no reason to"
    finally:
        if _alive(pid):
            os.kill(pid, 9)


# http: a real server


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", "durable-test")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json")

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] += 1
            hits = self.server.hits[path]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/json":
            self._json(
                200, {"hello": "world", "items": [1, 2, 3], "query": self.path.partition("?")[2]}
            )
        elif path == "/text":
            self._reply(200, b"plain words", "text/plain; charset=utf-8")
        elif path == "/bad-json":
            self._reply(200, b"{not json", "application/json")
        elif path == "/echo":
            try:
                received = json.loads(body) if body else None
            except ValueError:
                received = None
            self._json(200, {"method": self.command, "received": received, "raw": body.decode()})
        elif path == "/headers":
            self._json(200, {k.lower(): v for k, v in self.headers.items()})
        elif path == "/fail":
            self._json(500, {"error": "always"})
        elif path == "/missing":
            self._reply(404, b"nope", "text/plain")
        elif path == "/flaky":
            if hits <= 2:
                self._json(500, {"error": f"failure {hits}"})
            else:
                self._json(200, {"ok": True, "hits": hits})
        elif path == "/bigint":  # valid JSON the journal's msgpack cannot hold
            self._reply(200, b'{"n": 123456789012345678901234567890}', "application/json")
        elif path == "/latin":  # text/plain with no charset, and not UTF-8
            self._reply(200, b"caf\xe9", "text/plain")
        elif path == "/cookies":
            self.send_response(200)
            self.send_header("Set-Cookie", "a=1")
            self.send_header("Set-Cookie", "b=2")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            # Answers only once the test is over (or after a minute): a client timeout
            # always fires first, however loaded the machine.
            self.server.released.wait(60)
            self._json(200, {"late": True})
        else:
            self._reply(404, b"unknown", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = _route


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.released.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert sum(httpd.hits.values()) < 50, "runaway requests"


def test_http_get_json(tmp_path: Path, server: _Server) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/json", "params": {"q": "a b"}})
    assert result.status == "succeeded"
    output = result.tasks["t"].output
    assert set(output) == {"status", "headers", "json"}
    assert output["status"] == 200
    assert output["json"] == {"hello": "world", "items": [1, 2, 3], "query": "q=a+b"}
    assert output["headers"]["Content-Type"] == "application/json"
    assert output["headers"]["X-Served-By"] == "durable-test"
    assert server.hits["/json"] == 1


def test_http_get_text(tmp_path: Path, server: _Server) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/text"})
    assert result.status == "succeeded"
    output = result.tasks["t"].output
    assert set(output) == {"status", "headers", "text"}
    assert output["text"] == "plain words"


def test_http_json_content_type_that_does_not_parse_is_text(
    tmp_path: Path, server: _Server
) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/bad-json"})
    assert result.status == "succeeded"
    assert result.tasks["t"].output["text"] == "{not json"
    assert "json" not in result.tasks["t"].output


@pytest.mark.parametrize(
    ("path", "text"),
    [("/bigint", '{"n": 123456789012345678901234567890}'), ("/latin", "caf\ufffd")],
)
def test_http_a_good_response_it_cannot_keep_as_sent_is_text(
    tmp_path: Path, server: _Server, path: str, text: str
) -> None:
    """A 200 whose JSON holds an integer over 64 bits, or whose bytes are not the text
    they say: the task failed (and each retry fetched it again)."""
    result = run_one(tmp_path, "http", {"url": f"{server.url}{path}"})
    assert result.status == "succeeded", result.tasks["t"].error
    assert result.tasks["t"].output["text"] == text
    assert "json" not in result.tasks["t"].output


def test_http_a_header_sent_twice_keeps_both_values(tmp_path: Path, server: _Server) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/cookies"})
    assert result.tasks["t"].output["headers"]["Set-Cookie"] == "a=1, b=2"  # was "a=1"


def test_http_post_json_body_is_sent(tmp_path: Path, server: _Server) -> None:
    payload = {"name": "durable", "n": [1, 2], "nested": {"ok": True}}
    result = run_one(
        tmp_path, "http", {"url": f"{server.url}/echo", "method": "post", "json": payload}
    )
    assert result.status == "succeeded"
    output = result.tasks["t"].output
    assert output["json"]["method"] == "POST"
    assert output["json"]["received"] == payload


def test_http_raw_body_is_sent(tmp_path: Path, server: _Server) -> None:
    result = run_one(
        tmp_path, "http", {"url": f"{server.url}/echo", "method": "PUT", "body": "raw text"}
    )
    assert result.status == "succeeded"
    assert result.tasks["t"].output["json"]["method"] == "PUT"
    assert result.tasks["t"].output["json"]["raw"] == "raw text"


def test_http_json_body_from_references(tmp_path: Path, server: _Server) -> None:
    result = run_workflow(
        tmp_path,
        [
            {"id": "a", "tool": "echo", "input": {"items": [1, 2]}},
            {
                "id": "b",
                "tool": "http",
                "input": {
                    "url": f"{server.url}/echo",
                    "method": "POST",
                    "json": {"got": "${a.output.items}"},
                },
            },
        ],
    )
    assert result.tasks["b"].output["json"]["received"] == {"got": [1, 2]}


def test_http_headers_are_passed(tmp_path: Path, server: _Server) -> None:
    headers = {"Authorization": "Bearer t0ken", "X-Idempotency": "k-1"}
    result = run_one(tmp_path, "http", {"url": f"{server.url}/headers", "headers": headers})
    assert result.status == "succeeded"
    seen = result.tasks["t"].output["json"]
    assert seen["authorization"] == "Bearer t0ken"
    assert seen["x-idempotency"] == "k-1"


@pytest.mark.parametrize(("path", "status"), [("/fail", 500), ("/missing", 404)])
def test_http_error_status_fails_the_task(
    tmp_path: Path, server: _Server, path: str, status: int
) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}{path}"})
    assert result.status == "failed"
    error = result.tasks["t"].error or ""
    assert str(status) in error
    assert path in error


def test_http_error_status_is_retried_until_it_succeeds(tmp_path: Path, server: _Server) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/flaky"}, retries=2, retry_delay=0.01)
    assert result.status == "succeeded"
    task = result.tasks["t"]
    assert task.attempts == 3
    assert task.output["json"] == {"ok": True, "hits": 3}
    assert server.hits["/flaky"] == 3


def test_http_retries_run_out(tmp_path: Path, server: _Server) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/fail"}, retries=1, retry_delay=0.01)
    assert result.status == "failed"
    assert result.tasks["t"].attempts == 2
    assert server.hits["/fail"] == 2


def test_http_raise_for_status_false_keeps_an_error_status_a_success(
    tmp_path: Path, server: _Server
) -> None:
    result = run_one(tmp_path, "http", {"url": f"{server.url}/fail", "raise_for_status": False})
    assert result.status == "succeeded"
    assert result.tasks["t"].output["status"] == 500
    assert result.tasks["t"].output["json"] == {"error": "always"}
    assert server.hits["/fail"] == 1


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_connection_refused_fails_with_a_clear_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_refused_port()}/json"
    result = run_one(tmp_path, "http", {"url": url, "timeout": 5})
    assert result.status == "failed"
    error = result.tasks["t"].error or ""
    assert url in error
    assert "connect" in error.lower()


def test_http_own_timeout_fails_the_task_with_a_clear_message(
    tmp_path: Path, server: _Server
) -> None:
    # aiohttp's total timeout raises a bare TimeoutError (not a ClientError): it
    # fails this task, with a message naming the URL, and is not mistaken for the
    # task's own `timeout` (none is set here).
    url = f"{server.url}/slow"
    result = run_one(tmp_path, "http", {"url": url, "timeout": 0.2})
    assert result.status == "failed"
    error = result.tasks["t"].error or ""
    assert "time" in error.lower()
    assert url in error
