"""The one error hierarchy: everything a user can get wrong is a `DurableError`.

Each error names its culprit (a file, a task id, a run id) and carries the process
exit code on its class, so the CLI has exactly one place that turns errors into
output. Anything that is *not* a `DurableError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class DurableError(Exception):
    """Base of every user-facing error. `exit_code` is what the CLI exits with."""

    exit_code: int = 2

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def __str__(self) -> str:
        return "\n".join([self.message, *("  " + d for d in self.details)])


class SpecError(DurableError):
    """A workflow file that cannot be read or decoded into a workflow."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class ValidationError(DurableError):
    """A workflow that decoded but is wrong; carries every problem found, not the first."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source}: {count} {noun} found", problems)
        self.source = source
        self.problems = list(problems)


class ReferenceSyntaxError(DurableError):
    """A `${...}` that does not parse. Found at validation time."""


class ExpressionError(DurableError):
    """A `when` expression that does not parse, or uses something the language refuses."""


class ResolutionError(DurableError):
    """A reference that parsed but cannot be resolved at run time (a missing key)."""


class EvaluationError(DurableError):
    """A `when` expression that parsed but failed on the values it got."""


class ToolNotFound(DurableError):
    """A tool name that is neither registered nor an importable `module:function`."""


class ParamError(DurableError):
    """A `-p KEY=VALUE` the workflow does not declare, or that is malformed."""


class JournalError(DurableError):
    """A journal file we must not touch: not SQLite, foreign, or of a newer schema."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class JournalAbsent(JournalError):
    """No journal there yet, where one is only to be read: nothing it could hold."""


class RunNotFound(DurableError):
    def __init__(self, run_id: str, path: str) -> None:
        super().__init__(
            f"run '{run_id}' not found in {path}", ["see `durable runs` for the runs it holds"]
        )
        self.run_id = run_id


class RunLocked(DurableError):
    """Another live process drives this run; two drivers would run tasks twice."""

    def __init__(self, run_id: str, why: str | None = None) -> None:
        if why is None:
            super().__init__(
                f"run '{run_id}' is being driven by another live process",
                ["wait for it to finish, or stop it (Ctrl-C) and resume again"],
            )
        else:
            super().__init__(f"run '{run_id}' is being run by workers: {why}")
        self.run_id = run_id


class RunExists(DurableError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run '{run_id}' already exists", ["use `durable resume` to continue it"])
        self.run_id = run_id


class Interrupted(DurableError):
    """The run was stopped by SIGINT/SIGTERM; it is journaled and resumable."""

    exit_code = 130

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run '{run_id}' interrupted", [f"resume it with `durable resume {run_id}`"]
        )
        self.run_id = run_id


class OutputClosed(DurableError):
    """The command's output cannot be written: the reader of its pipe quit (`| head`).

    Raised once by a reporter (`report/lines.py`). A run's driver takes it as Ctrl-C
    (`Engine.show`): the run stops, journaled and resumable. A watcher just ends."""

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot write the output: {reason}")
        self.reason = reason


class JournalDamaged(JournalError):
    """A run whose rows fail their checksums or do not fold: refused, never read wrongly.

    Only that run is refused; the other runs in the journal stay usable.
    """

    def __init__(self, path: str, run_id: str, problem: str) -> None:
        super().__init__(path, f"run '{run_id}' is damaged: {problem}")
        self.details = [
            "`durable check` lists all the damage; the journal's other runs are unaffected"
        ]
        self.run_id = run_id
        self.problem = problem
