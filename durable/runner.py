"""The Python API: run a workflow, or resume a run, and get a `RunResult` back.

`arun`/`aresume` are the async forms; `run`/`resume` run them on a loop of their own
(`eventloop.run`: uvloop where installed).
Each opens the journal, takes the run's lock, folds what the journal already knows,
and hands over to the `Engine`. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from durable import eventloop
from durable import spec as spec_module
from durable.allocation import bulk_allocation
from durable.amend import Amendment, RenamedTask, plan_amendment, plan_rerun
from durable.engine import MAX_DEATHS, Engine
from durable.errors import DurableError, OutputClosed, ParamError, SpecError
from durable.events import Event, RunAmended, RunResumed, RunStarted
from durable.executors import refuse_in_pool_worker
from durable.fingerprint import fingerprint, tool_identity
from durable.formats import MAX_DEPTH
from durable.graph import Plan
from durable.journal import Journal, RunRecord, default_path
from durable.journal import cache as cache_index
from durable.journal.file import is_postgres
from durable.loader import plan_file, plan_workflow
from durable.refs import Scope
from durable.runlock import check_run_id
from durable.spec import Workflow
from durable.state import INTERRUPTED, SUCCEEDED, RunState, TaskState
from durable.summary import summarize


class RunStats(msgspec.Struct):
    """What a session cost: its wall time and the journal's group commits."""

    run_seconds: float = 0.0
    commits: int = 0
    events: int = 0
    peak_running: int = 0


class RunResult(msgspec.Struct):
    """What a run ended as. `status` is succeeded, failed or interrupted."""

    run_id: str
    workflow: str
    status: str
    tasks: dict[str, TaskState]
    already_finished: bool = False
    #: An edited resume that only planned (`Edit.dry_run`): nothing was written.
    dry_run: bool = False
    stats: RunStats = msgspec.field(default_factory=RunStats)

    @property
    def outputs(self) -> dict[str, Any]:
        return {
            task_id: task.output for task_id, task in self.tasks.items() if task.state == SUCCEEDED
        }

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED


class Hooks(msgspec.Struct):
    """Optional callbacks for a front end (the CLI's reporters)."""

    on_start: Callable[[str, Workflow, RunState, bool], None] | None = None
    on_event: Callable[[Event], None] | None = None
    #: An edited resume's plan, before anything is written (`amend.py`).
    on_plan: Callable[[str, Amendment], None] | None = None
    #: A line worth telling the user (the run's file changed since it started).
    on_note: Callable[[str], None] | None = None


class Edit(msgspec.Struct):
    """Resume with an edited workflow: the file to read (None: the run's own), and
    whether only to show the plan."""

    path: str | None = None
    dry_run: bool = False
    #: `durable rerun`: run these tasks again (and, with `downstream`, their
    #: dependents) in the run's own workflow, instead of reading a file.
    rerun: list[str] | None = None
    downstream: bool = False


class Session(msgspec.Struct):
    """How one session drives a run: the options `arun` and `aresume` share."""

    max_concurrency: int | None = None
    fail_fast: bool = False
    handle_signals: bool = False
    hooks: Hooks = msgspec.field(default_factory=Hooks)
    max_deaths: int = MAX_DEATHS
    #: Reuse earlier successes of the same work (`journal/cache.py`).
    cache: bool = False


def check_session(max_concurrency: int | None, durability: str, max_deaths: int) -> None:
    """Refuse what the CLI's options would refuse, passed through the Python API: a
    `max_concurrency` below 1 started nothing and waited forever, a `durability`
    that is no level raised a `KeyError` after creating the journal file."""
    from durable.journal.schema import DURABILITY

    if max_concurrency is not None and (
        max_concurrency.__class__ is not int or max_concurrency < 1
    ):
        raise DurableError(
            f"max_concurrency must be a whole number of at least 1, not {max_concurrency!r}"
        )
    if durability not in DURABILITY:
        levels = ", ".join(repr(level) for level in DURABILITY)
        raise DurableError(f"durability must be one of {levels}, not {durability!r}")
    if max_deaths.__class__ is not int or max_deaths < 1:
        raise DurableError(f"max_deaths must be a whole number of at least 1, not {max_deaths!r}")


def new_run_id() -> str:
    """Ten random hex digits. `os.urandom` is what `secrets.token_hex` reads; importing
    `secrets` (and `hmac` with it) cost a one-task run 1-2 ms of its start."""
    return os.urandom(5).hex()


def new_run(
    plan: Plan,
    folder: str | os.PathLike[str],
    params: dict[str, Any],
    run_id: str,
    source: str | None,
) -> tuple[RunRecord, RunStarted]:
    """A new run's row and first event: its workflow's snapshot, params, folder (where
    its `imports:` are found) and working directory, created now."""
    opening = RunStarted(at=time.time(), source=source)
    record = RunRecord(
        run_id=run_id,
        workflow=plan.workflow.name,
        spec=spec_module.encode(plan.workflow),
        spec_hash=spec_module.spec_hash(plan.workflow),
        params=params,
        base_dir=str(folder),
        created_at=opening.at,
        cwd=os.getcwd(),
    )
    return record, opening


class CommandLineText(str):
    """A param's value as typed on a command line (`-p size=50`): text that
    `merge_params` reads as JSON where the declared default is not text. A `str`
    a Python caller passes stays the `str` it is."""


def merge_params(workflow: Workflow, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The workflow's params with overrides applied; an undeclared name is an error.

    Overrides from the command line (`CommandLineText`) arrive as text. Where the
    declared default is not text, such a value is read as JSON when it parses (`-p
    size=50` gives the number 50, `-p tags='["a"]'` a list); otherwise it stays text.
    """
    params = dict(workflow.params)
    for name, value in (overrides or {}).items():
        if name not in params:
            declared = ", ".join(sorted(params)) or "none"
            raise ParamError(
                f"param '{name}' is not declared by workflow '{workflow.name}' (declared: {declared})"
            )
        if isinstance(value, CommandLineText):
            value = str(value)  # a plain str from here on, as the journal keeps it
            if not isinstance(params[name], str):
                try:
                    value = msgspec.json.decode(value)
                except msgspec.DecodeError:
                    pass
                except RecursionError:  # deeper than Python's stack: far past MAX_DEPTH
                    raise ParamError(
                        f"param '{name}': nested deeper than {MAX_DEPTH} levels"
                    ) from None
        problem = spec_module.data_problem(value, 3)  # as deep as a param in a file
        if problem is not None:
            raise ParamError(f"param '{name}': {problem}")
        params[name] = value
    return params


async def arun(
    workflow: str | os.PathLike[str] | Workflow,
    params: Mapping[str, Any] | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    fail_fast: bool = False,
    durability: str = "normal",
    base_dir: str | os.PathLike[str] | None = None,
    handle_signals: bool = False,
    hooks: Hooks | None = None,
    max_deaths: int = MAX_DEATHS,
    cache: bool = False,
) -> RunResult:
    """Run a workflow (a file path, or a `Workflow` built in code) to the end.

    `base_dir` is where a code-built workflow's `imports:` are found (default: the
    current directory). With `handle_signals`, SIGINT/SIGTERM interrupt the run
    cleanly; it is journaled and can be resumed. The current directory is recorded
    with the run: every later session of the run works there. `max_deaths`: see
    `Engine` (a task running at that many process deaths is failed, not restarted).
    """
    refuse_in_pool_worker()
    check_session(max_concurrency, durability, max_deaths)
    with bulk_allocation():
        if isinstance(workflow, Workflow):
            folder = Path(base_dir or os.getcwd()).resolve()
            source = f"workflow '{workflow.name}'"
            # Structs built in code skip the constraints a decode checks (ids, ranges).
            try:
                data = msgspec.to_builtins(workflow)
            except RecursionError:
                raise SpecError(source, f"nested deeper than {MAX_DEPTH} levels") from None
            checked = spec_module.from_data(data, source=source)
            plan = plan_workflow(checked, folder, source=source)
        else:
            plan, folder = plan_file(workflow)
    effective = merge_params(plan.workflow, params)
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    journal = await Journal.open(db, create=True, durability=durability)
    try:
        async with journal.lock(run_id):
            source = None if isinstance(workflow, Workflow) else str(Path(workflow).resolve())
            record, opening = new_run(plan, folder, effective, run_id, source)
            await journal.create_run(record, opening)
            session = Session(
                max_concurrency, fail_fast, handle_signals, hooks or Hooks(), max_deaths, cache
            )
            state = RunState.new(plan.tasks)
            return await _drive(
                journal, plan, record, state, opening, session, opening_committed=True
            )
    finally:
        await journal.close()


async def aresume(
    run_id: str,
    *,
    db: str | os.PathLike[str] | None = None,
    max_concurrency: int | None = None,
    fail_fast: bool = False,
    durability: str = "normal",
    handle_signals: bool = False,
    hooks: Hooks | None = None,
    max_deaths: int = MAX_DEATHS,
    edit: Edit | None = None,
    cache: bool = False,
) -> RunResult:
    """Continue a run: keep what succeeded or was skipped, run everything else.

    A run that already succeeded is returned as it is, with `already_finished` set,
    and nothing runs. A damaged run (`JournalDamaged`) is refused. The session
    works in the run's recorded directory, wherever it is resumed from.

    With `edit`, the run goes on with its workflow file read again (or another):
    what changed runs again, and why, is planned by `amend.py` and given to
    `hooks.on_plan` before anything is written; `edit.dry_run` stops there.
    """
    from durable.inspection import fold_run, resolve_run_id

    refuse_in_pool_worker()
    check_session(max_concurrency, durability, max_deaths)
    hooks = hooks or Hooks()
    journal = await Journal.open(db, create=False, durability=durability)
    try:
        run_id = await resolve_run_id(journal, run_id)
        async with journal.lock(run_id):
            # Read under the lock: a `durable prune` may have taken the run meanwhile.
            record = await journal.get_run(run_id)
            with bulk_allocation():
                workflow, state, _ = await fold_run(journal, record)
                amended = None
                if edit is not None:
                    plan, amended = _amend(record, workflow, state, edit, hooks)
                    if edit.dry_run or amended is None:
                        status = state.status or INTERRUPTED
                        return RunResult(
                            run_id,
                            workflow.name,
                            status,
                            state.tasks,
                            already_finished=status == SUCCEEDED,
                            dry_run=edit.dry_run,
                        )
                else:
                    if state.status == SUCCEEDED:
                        return RunResult(
                            run_id, workflow.name, SUCCEEDED, state.tasks, already_finished=True
                        )
                    _note_if_edited(state, workflow, hooks)
                    plan = plan_workflow(
                        workflow, record.base_dir, source=f"run '{run_id}'", trusted=True
                    )
            session = Session(max_concurrency, fail_fast, handle_signals, hooks, max_deaths, cache)
            # A run created by an older durable may have no first event (a crash
            # right after its row was written): this session is then its first.
            opening = RunResumed(at=time.time()) if state.sessions else RunStarted(at=time.time())
            with working_directory(record):
                return await _drive(journal, plan, record, state, opening, session, amended=amended)
    finally:
        await journal.close()


def _amend(
    record: RunRecord, workflow: Workflow, state: RunState, edit: Edit, hooks: Hooks
) -> tuple[Plan, RunAmended | None]:
    """Plan the edited workflow against the run; None: nothing to change or run."""
    if edit.rerun is not None:
        return _rerun(record, workflow, state, edit, hooks)
    path = edit.path or state.source
    if path is None:
        raise DurableError(
            f"run '{record.run_id}' was built in code and has no workflow file to read "
            "again: give one with --workflow FILE"
        )
    plan, _ = plan_file(path)
    try:
        amendment = plan_amendment(
            state, workflow, plan, params_of(record, plan.workflow), record.run_id
        )
    except RenamedTask as exc:
        raise SpecError(str(path), exc.message) from None
    if hooks.on_plan is not None:
        hooks.on_plan(record.run_id, amendment)
    if not amendment.runs and not amendment.removed and state.status == SUCCEEDED:
        return plan, None
    event = RunAmended(
        at=time.time(),
        spec=spec_module.encode(plan.workflow),
        tasks=list(plan.tasks),
        reset=amendment.reset,
        source=str(Path(path).resolve()),
    )
    return plan, event


def _rerun(
    record: RunRecord, workflow: Workflow, state: RunState, edit: Edit, hooks: Hooks
) -> tuple[Plan, RunAmended]:
    """`durable rerun`: the run's own workflow, with the named tasks reset."""
    plan = plan_workflow(workflow, record.base_dir, source=f"run '{record.run_id}'", trusted=True)
    try:
        amendment = plan_rerun(state, plan, edit.rerun or [], edit.downstream)
    except DurableError as exc:
        raise DurableError(f"run '{record.run_id}': {exc.message}") from None
    if hooks.on_plan is not None:
        hooks.on_plan(record.run_id, amendment)
    event = RunAmended(
        at=time.time(),
        spec=spec_module.encode(workflow),
        tasks=list(plan.tasks),
        reset=amendment.reset,
        source=state.source,
    )
    return plan, event


def cache_preview(
    plan: Plan, params: dict[str, Any], db: str | os.PathLike[str] | None, cache: bool
) -> dict[str, str]:
    """`durable run --dry-run`: the tasks the cache would answer, and from where.

    Tasks are taken in dependency order, each rendered from its upstream outputs
    where the cache answered those too; one whose input needs an output that would
    only exist once something runs (or the run's id) cannot be known in advance.
    The journal is only read; a lookup that fails is a miss.
    """
    target = db or default_path()
    preview = _preview(plan, params, cache)
    if is_postgres(target):
        return eventloop.run(_preview_on_postgres(preview, str(target)))
    path = Path(target)
    if not path.exists():
        return {}
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        request = next(preview)
        while True:
            try:
                hit = cache_index.lookup(connection, *request)
            except sqlite3.Error:
                hit = None
            request = preview.send(hit)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        connection.close()


async def _preview_on_postgres(
    preview: Generator[tuple[str, float | None], Any, dict[str, str]], dsn: str
) -> dict[str, str]:
    from durable.journal.postgres import PgJournal

    try:
        journal = await PgJournal.open(dsn, create=False, readonly=True)
    except DurableError:
        return {}
    try:
        request = next(preview)
        while True:
            try:
                hit = await journal.cached_async(*request)
            except DurableError:
                hit = None
            request = preview.send(hit)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        await journal.close()


def _preview(
    plan: Plan, params: dict[str, Any], cache: bool
) -> Generator[tuple[str, float | None], Any, dict[str, str]]:
    """`cache_preview`'s walk, for either journal: it yields each (fingerprint, oldest
    entry allowed) to look up, is sent back the hit or None, and returns what it found."""
    scope = Scope(params, "", {})
    found: dict[str, str] = {}
    for level in plan.levels:
        for task_id in level:
            task = plan.tasks[task_id]
            if not cache_index.caches(task, cache or plan.workflow.cache):
                continue
            if task.spec.foreach is not None or task.spec.when is not None:
                continue  # decided at run time
            try:
                value = task.template.render(scope)
                mark = fingerprint(tool_identity(task.tool), value)
            except (DurableError, TypeError, ValueError):
                continue
            hit = yield mark, cache_index.newer_than(task, plan.workflow, time.time())
            if hit is not None:
                scope.outputs[task_id] = hit.output  # type: ignore[index]
                found[task_id] = hit.describe()
    return found


def params_of(record: RunRecord, workflow: Workflow) -> dict[str, Any]:
    """The run's params: those it started with, and the defaults of any its
    (amended) workflow declares since."""
    return {**workflow.params, **record.params}


def _note_if_edited(state: RunState, workflow: Workflow, hooks: Hooks) -> None:
    """Say so when the run's workflow file no longer matches the run."""
    if hooks.on_note is None or state.source is None:
        return
    try:
        on_disk = spec_module.read(state.source).workflow
    except (DurableError, OSError):
        on_disk = None
    if on_disk is None or spec_module.spec_hash(on_disk) != spec_module.spec_hash(workflow):
        hooks.on_note(
            f"{state.source} has changed since this run read it; this resume runs the "
            f"run's own copy (`durable resume --reload` runs the edited file)"
        )


@contextlib.contextmanager
def working_directory(record: RunRecord) -> Iterator[None]:
    """Work in the run's own directory for the session, so that every attempt of a
    run (a `shell` step's files, say) lands in one place, whoever resumes it."""
    if record.cwd is None:  # recorded since journal schema 2
        yield
        return
    here = os.getcwd()
    try:
        os.chdir(record.cwd)
    except OSError as exc:
        raise DurableError(
            f"run '{record.run_id}' works in {record.cwd}, which cannot be entered: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        yield
    finally:
        os.chdir(here)


async def _drive(
    journal: Journal,
    plan: Plan,
    record: RunRecord,
    state: RunState,
    opening: RunStarted | RunResumed,
    session: Session,
    opening_committed: bool = False,
    amended: RunAmended | None = None,
) -> RunResult:
    """Drive one session; `opening_committed`: `create_run` already wrote the opening;
    `amended`: the session goes on with an edited workflow (`plan` is its)."""
    run_id = record.run_id
    journal.drop_requests(run_id)
    journal.keep_summary(run_id, lambda: summarize(record.workflow, record.created_at, state))
    journal.start()
    engine = Engine(
        plan,
        journal,
        run_id,
        params_of(record, plan.workflow),
        state,
        max_concurrency=session.max_concurrency,
        fail_fast=session.fail_fast,
        on_event=session.hooks.on_event,
        max_deaths=session.max_deaths,
        cache=session.cache,
    )
    hooks = session.hooks
    opening_events: list[Event] = [opening] if amended is None else [opening, amended]
    if amended is not None:
        # An amendment changes the run's tasks: the reporters start from the state
        # it leaves, and are shown its events after.
        for event in opening_events:
            state.apply(event)
            journal.append(run_id, event)
    try:
        if hooks.on_start is not None:
            hooks.on_start(run_id, plan.workflow, state, isinstance(opening, RunResumed))
        if amended is not None and hooks.on_event is not None:
            for event in opening_events:
                hooks.on_event(event)
    except OutputClosed:  # nobody reads the run's output (`| head`): as Ctrl-C, at once
        engine.interrupt()
    if amended is None:
        if opening_committed:
            engine.replay(opening)
        else:
            engine.emit(opening)
    loop = asyncio.get_running_loop()
    if session.handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, engine.interrupt)
    started = time.perf_counter()
    try:
        status = await engine.run()
    finally:
        if session.handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    stats = RunStats(
        time.perf_counter() - started, journal.commits, journal.events_written, engine.peak_running
    )
    return RunResult(run_id, plan.workflow.name, status, state.tasks, stats=stats)


def run(
    workflow: str | os.PathLike[str] | Workflow,
    params: Mapping[str, Any] | None = None,
    **options: Any,
) -> RunResult:
    """Synchronous `arun`."""
    return eventloop.run(arun(workflow, params, **options))


def resume(run_id: str, **options: Any) -> RunResult:
    """Synchronous `aresume`."""
    return eventloop.run(aresume(run_id, **options))


__all__ = [
    "INTERRUPTED",
    "Hooks",
    "RunResult",
    "RunStats",
    "Session",
    "aresume",
    "arun",
    "merge_params",
    "resume",
    "run",
]
