"""`durable_cli.output_file.write_output`: what `-o FILE` does with a device.

`/dev/full` takes every open and refuses every write (ENOSPC): the error must name
the path, and the device must be written to, never replaced. A temporary file or a
rename in `/dev` is refused here before it happens (as root it would replace the
device node), so a regression fails this test instead of breaking the machine.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from durable_cli import output_file
from durable_cli.output_file import write_output

from durable.errors import DurableError

DEV_FULL = Path("/dev/full")


@pytest.fixture
def nothing_renamed_in_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(real: Any) -> Any:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            named = [*map(str, args), *map(str, kwargs.values())]
            assert not any(name.startswith("/dev") for name in named), f"{real.__name__}{args}"
            return real(*args, **kwargs)

        return guarded

    monkeypatch.setattr(tempfile, "mkstemp", refuse(tempfile.mkstemp))
    monkeypatch.setattr(os, "replace", refuse(os.replace))
    monkeypatch.setattr(os, "rename", refuse(os.rename))
    assert output_file.tempfile.mkstemp is tempfile.mkstemp  # the module sees the guard


@pytest.mark.skipif(
    not (DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)), reason="no /dev/full"
)
def test_a_full_device_is_written_to_and_its_error_names_the_path(
    nothing_renamed_in_dev: None,
) -> None:
    with pytest.raises(DurableError) as raised:
        write_output(DEV_FULL, b'{"run_id": "r"}\n')
    assert str(raised.value) == "cannot write /dev/full: No space left on device"
    assert raised.value.exit_code == 2
    assert stat.S_ISCHR(DEV_FULL.stat().st_mode)


def test_a_missing_folder_is_one_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "out.json"
    with pytest.raises(DurableError, match=f"^cannot write {path}: No such file or directory$"):
        write_output(path, b"{}\n")
    assert not path.parent.exists()
