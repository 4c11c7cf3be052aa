"""tools.py: the registry, `@tool`, `module:function` references, and `imports:`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable import tool
from durable.builtins import shell_words
from durable.errors import ToolNotFound
from durable.tools import REGISTRY, Registry, ToolDef, arguments_problem, import_modules


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what registering and importing tools does to the global registry and `sys`."""
    monkeypatch.setattr(REGISTRY, "_tools", dict(REGISTRY._tools))
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = dict(sys.modules)
    yield
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]
    sys.modules.update(modules)


def write_module(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def double(x: int) -> int:
    return 2 * x


async def fetch(url: str) -> str:
    await asyncio.sleep(0)
    return url


class TestRegistry:
    def test_add_uses_the_function_name(self) -> None:
        registry = Registry()
        tool_def = registry.add(double)
        assert tool_def == ToolDef(name="double", fn=double, is_async=False, cpu_bound=False)
        assert registry.resolve("double") is tool_def
        assert "double" in registry
        assert registry.names() == ["double"]

    def test_add_with_name_and_cpu_bound(self) -> None:
        registry = Registry()
        tool_def = registry.add(double, name="twice", cpu_bound=True)
        assert (tool_def.name, tool_def.cpu_bound) == ("twice", True)
        assert "double" not in registry
        assert registry.resolve("twice").fn is double

    def test_async_is_detected(self) -> None:
        registry = Registry()
        assert registry.add(fetch).is_async is True
        assert registry.add(double).is_async is False
        assert registry.add(lambda: 1, name="anon").is_async is False

    def test_async_cannot_be_cpu_bound(self) -> None:
        with pytest.raises(TypeError, match="tool 'fetch': an async function cannot be cpu_bound"):
            Registry().add(fetch, cpu_bound=True)

    def test_not_callable(self) -> None:
        with pytest.raises(TypeError, match="a tool must be callable, got int"):
            Registry().add(5)  # type: ignore[arg-type]

    def test_registering_again_replaces(self) -> None:
        registry = Registry()
        registry.add(double, name="t")
        registry.add(fetch, name="t")
        assert registry.resolve("t").fn is fetch
        assert registry.names() == ["t"]

    def test_names_are_sorted(self) -> None:
        registry = Registry()
        for name in ["b", "c", "a"]:
            registry.add(double, name=name)
        assert registry.names() == ["a", "b", "c"]

    def test_prepare_shapes_the_template_source(self) -> None:
        tool_def = Registry().add(double, prepare=lambda raw: {"x": raw})
        assert tool_def.template_source(3) == {"x": 3}
        assert Registry().add(double).template_source(3) == 3


class TestDecorator:
    def test_bare_decorator_registers_by_function_name(self) -> None:
        @tool
        def summarize_for_test(text: str) -> str:
            return text[:3]

        assert summarize_for_test("abcdef") == "abc"  # still a plain function
        tool_def = REGISTRY.resolve("summarize_for_test")
        assert tool_def.fn is summarize_for_test
        assert summarize_for_test.__durable_tool__ is tool_def  # type: ignore[attr-defined]
        assert (tool_def.is_async, tool_def.cpu_bound) == (False, False)

    def test_decorator_with_options(self) -> None:
        @tool(name="crunch_for_test", cpu_bound=True)
        def crunch(n: int) -> int:
            return n * n

        assert crunch(3) == 9
        tool_def = REGISTRY.resolve("crunch_for_test")
        assert (tool_def.name, tool_def.cpu_bound, tool_def.fn) == ("crunch_for_test", True, crunch)
        assert "crunch" not in REGISTRY

    def test_async_decorated(self) -> None:
        @tool(name="search_for_test")
        async def search(query: str) -> list[str]:
            return [query]

        assert REGISTRY.resolve("search_for_test").is_async is True
        assert asyncio.run(search("q")) == ["q"]

    def test_async_cpu_bound_is_refused(self) -> None:
        with pytest.raises(TypeError, match="cannot be cpu_bound"):

            @tool(cpu_bound=True)
            async def nope() -> None:
                return None

    def test_builtins_are_registered(self) -> None:
        for name in ["echo", "sleep", "shell", "http"]:
            assert REGISTRY.resolve(name).is_async is True
        assert REGISTRY.resolve("shell").prepare is shell_words


class TestModuleFunction:
    def test_resolves_json_dumps(self) -> None:
        tool_def = Registry().resolve("json:dumps")
        assert tool_def == ToolDef(name="json:dumps", fn=json.dumps, is_async=False)
        assert tool_def.fn([1]) == "[1]"

    def test_dotted_attribute(self) -> None:
        assert Registry().resolve("json:JSONEncoder.encode").fn is json.JSONEncoder.encode

    def test_async_function(self) -> None:
        assert Registry().resolve("asyncio:sleep").is_async is True

    def test_builtin_by_module_reference_is_the_registered_tool(self) -> None:
        tool_def = REGISTRY.resolve("durable.builtins:shell")
        assert tool_def is REGISTRY.resolve("shell")
        assert tool_def.prepare is shell_words

    def test_registered_function_keeps_its_options(self, tmp_path: Path) -> None:
        write_module(
            tmp_path,
            "heavy_mod_for_test",
            """
            import durable

            @durable.tool(name="heavy_for_test", cpu_bound=True)
            def heavy(n):
                return n
            """,
        )
        assert import_modules([], tmp_path) == []
        tool_def = Registry().resolve("heavy_mod_for_test:heavy")
        assert (tool_def.name, tool_def.cpu_bound) == ("heavy_for_test", True)

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("json:no_such", "tool 'json:no_such': module 'json' has no function 'no_such'"),
            ("json:decoder", "tool 'json:decoder': module 'json' has no function 'decoder'"),
            ("json:", "tool 'json:': expected 'module:function'"),
            (":dumps", "tool ':dumps': expected 'module:function'"),
            (
                "no_such_module_zz:f",
                "tool 'no_such_module_zz:f': cannot import module 'no_such_module_zz': "
                "ModuleNotFoundError: No module named 'no_such_module_zz'",
            ),
        ],
    )
    def test_errors(self, name: str, message: str) -> None:
        with pytest.raises(ToolNotFound) as info:
            Registry().resolve(name)
        assert str(info.value) == message

    def test_module_that_fails_to_import(self, tmp_path: Path) -> None:
        write_module(tmp_path, "boom_mod_for_test", "raise RuntimeError('boom')\n")
        import_modules([], tmp_path)
        with pytest.raises(ToolNotFound) as info:
            Registry().resolve("boom_mod_for_test:f")
        assert str(info.value) == (
            "tool 'boom_mod_for_test:f': cannot import module 'boom_mod_for_test': "
            "RuntimeError: boom"
        )

    @pytest.mark.parametrize(
        ("body", "why"),
        [
            ("import sys\nsys.exit('MY_KEY is not set')\n", ": MY_KEY is not set"),
            ("raise SystemExit(3)\n", ": 3"),
            ("raise SystemExit\n", ""),
        ],
    )
    def test_a_module_that_exits_as_it_is_imported(
        self, tmp_path: Path, body: str, why: str
    ) -> None:
        """It fails to import, naming itself, as one that raises: it does not end the
        command (which printed the bare message, or nothing, with its own code)."""
        name = f"exits_{abs(hash(body))}_for_test"
        write_module(tmp_path, name, body)
        why = f"'{name}': ImportError: it called sys.exit{why}"
        assert import_modules([name], tmp_path) == [f"imports: cannot import {why}"]
        with pytest.raises(ToolNotFound, match=re.escape(f"cannot import module {why}")):
            Registry().resolve(f"{name}:f")


class TestUnknown:
    def test_suggests_close_names(self) -> None:
        registry = Registry()
        for name in ["web_search", "summarize", "echo"]:
            registry.add(double, name=name)
        with pytest.raises(ToolNotFound) as info:
            registry.resolve("web_serach")
        assert info.value.message == "unknown tool 'web_serach'"
        assert info.value.details == ["did you mean 'web_search'?"]
        assert str(info.value) == "unknown tool 'web_serach'\n  did you mean 'web_search'?"
        assert info.value.exit_code == 2

    def test_no_suggestion_when_nothing_is_close(self) -> None:
        registry = Registry()
        registry.add(double, name="echo")
        with pytest.raises(ToolNotFound) as info:
            registry.resolve("zzzzzz")
        assert info.value.details == []

    def test_several_suggestions(self) -> None:
        registry = Registry()
        for name in ["fetch_a", "fetch_b"]:
            registry.add(double, name=name)
        with pytest.raises(ToolNotFound) as info:
            registry.resolve("fetch_")
        [detail] = info.value.details
        assert detail.startswith("did you mean ")
        assert "'fetch_a'" in detail
        assert "'fetch_b'" in detail


class TestImportModules:
    def test_imports_relative_to_the_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "workflow"
        write_module(
            folder,
            "my_tools_for_test",
            """
            import durable

            @durable.tool
            def shout_for_test(text):
                return text.upper()
            """,
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        assert import_modules(["my_tools_for_test"], folder) == []
        assert REGISTRY.resolve("shout_for_test").fn("hi") == "HI"
        assert sys.path[0] == str(folder.resolve())

    def test_package_module(self, tmp_path: Path) -> None:
        write_module(tmp_path / "pkg_for_test", "__init__", "")
        write_module(
            tmp_path / "pkg_for_test",
            "ops",
            "import durable\n\n@durable.tool\ndef pkg_op_for_test():\n    return 1\n",
        )
        assert import_modules(["pkg_for_test.ops"], tmp_path) == []
        assert "pkg_op_for_test" in REGISTRY

    def test_folder_is_added_once(self, tmp_path: Path) -> None:
        import_modules([], tmp_path)
        import_modules([], tmp_path)
        assert sys.path.count(str(tmp_path.resolve())) == 1

    def test_failures_are_problems_not_exceptions(self, tmp_path: Path) -> None:
        write_module(tmp_path, "raises_for_test", "raise ValueError('bad config')\n")
        write_module(tmp_path, "syntax_for_test", "def f(:\n")
        write_module(tmp_path, "fine_for_test", "VALUE = 1\n")
        found = import_modules(
            ["no_such_module_zz", "raises_for_test", "syntax_for_test", "fine_for_test"], tmp_path
        )
        assert found[:2] == [
            "imports: cannot import 'no_such_module_zz': "
            "ModuleNotFoundError: No module named 'no_such_module_zz'",
            "imports: cannot import 'raises_for_test': ValueError: bad config",
        ]
        assert found[2].startswith("imports: cannot import 'syntax_for_test': SyntaxError: ")
        assert len(found) == 3
        assert sys.modules["fine_for_test"].VALUE == 1

    def test_two_folders_with_their_own_tools_module(self, tmp_path: Path) -> None:
        for folder in ["one", "two"]:
            write_module(
                tmp_path / folder,
                "tools",
                f"""
                import durable

                @durable.tool(name="which_for_test")
                def which():
                    return "{folder}"
                """,
            )
        assert import_modules(["tools"], tmp_path / "one") == []
        assert REGISTRY.resolve("which_for_test").fn() == "one"
        assert import_modules(["tools"], tmp_path / "two") == []
        assert REGISTRY.resolve("which_for_test").fn() == "two"
        assert Path(sys.modules["tools"].__file__).parent == (tmp_path / "two").resolve()
        assert import_modules(["tools"], tmp_path / "one") == []
        assert REGISTRY.resolve("which_for_test").fn() == "one"

    def test_same_folder_is_not_imported_twice(self, tmp_path: Path) -> None:
        write_module(
            tmp_path,
            "counted_for_test",
            """
            import builtins

            builtins.counted_for_test = getattr(builtins, "counted_for_test", 0) + 1
            """,
        )
        import builtins

        try:
            import_modules(["counted_for_test"], tmp_path)
            import_modules(["counted_for_test"], tmp_path)
            assert builtins.counted_for_test == 1  # type: ignore[attr-defined]
        finally:
            del builtins.counted_for_test  # type: ignore[attr-defined]


class TestShellWords:
    def test_string_command_is_split_before_substitution(self) -> None:
        assert shell_words("echo ${a.output} 'two words'") == {
            "command": ["echo", "${a.output}", "two words"]
        }

    def test_a_command_that_is_one_reference_is_left_for_its_value(self) -> None:
        assert shell_words("${plan.output.argv}") == {"command": "${plan.output.argv}"}

    def test_spaces_around_one_reference_make_it_a_command_to_split(self) -> None:
        """Split before substitution, as any text around a reference: the value is one
        word of data, never words of a command line."""
        assert shell_words(" ${a.output} ") == {"command": ["${a.output}"]}

    def test_mapping_command(self) -> None:
        assert shell_words({"command": "ls -l", "cwd": "/"}) == {
            "command": ["ls", "-l"],
            "cwd": "/",
        }

    def test_list_command_is_left_alone(self) -> None:
        assert shell_words({"command": ["sh", "-c", "x"]}) == {"command": ["sh", "-c", "x"]}


def _takes(x: int, y: int = 0) -> int:
    return x + y


def _takes_any(*args: object, **kwargs: object) -> None:
    return None


class TestArgumentsProblem:
    """What validate asks of a task's input as written: the arguments the call will
    pass (`executors.call_args`) must bind to the tool's function."""

    TOOL = ToolDef(name="takes", fn=_takes, is_async=False)

    @pytest.mark.parametrize(
        ("source", "problem"),
        [
            ({"x": 1}, None),
            ({"x": "${a.output}", "y": 2}, None),  # values are references: keys still count
            ({"x": 1, "z": 2}, "it has no argument 'z' (it takes: x, y)"),
            ({"y": 1}, "missing a required argument: 'x'"),
            ({1: 1}, "the key 1 is no argument name (a mapping's keys name arguments)"),
            (None, "missing a required argument: 'x'"),
            (5, None),  # one argument
            ("text ${a.output}", None),  # renders to text: one argument
            ("${a.output}", None),  # one whole reference: anything, known at run time
            ([1, 2], None),
        ],
    )
    def test_the_input_binds_to_the_function(self, source: object, problem: str | None) -> None:
        assert arguments_problem(self.TOOL, source) == problem

    def test_a_function_that_takes_anything_takes_any_keys(self) -> None:
        anything = ToolDef(name="any", fn=_takes_any, is_async=False)
        assert arguments_problem(anything, {"whatever": 1, "else": 2}) is None
        assert arguments_problem(anything, None) is None
