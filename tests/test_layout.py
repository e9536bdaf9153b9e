"""The package's shape: imports run only down the flow, no module imports itself back in a loop, and the CLI's
table of parameter -> flag names only flags that argparse really has."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import saver_search
from saver_search.cli import main as cli_main
from saver_search.search.spec import StudySpec

PACKAGE = Path(saver_search.__file__).parent
# Each layer may import only itself and the layers before it (the base: errors, files, compat, _version,
# _validation). The package face and __main__ stand on top.
LAYERS = ["base", "zoo", "predictions", "cascade", "search", "report", "inference", "cli", "face"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "face"
    return parts[1] if parts[1] in LAYERS else "base"


def imports(path: Path, top_level_only: bool) -> list[tuple[int, str]]:
    """The saver_search modules ``path`` imports (``from saver_search.x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("saver_search"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*child.split("."))).with_suffix(".py").exists()
                found.append((node.lineno, child if is_module else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("saver_search")]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_imports_run_only_down_the_flow():
    upward = [f"{path.relative_to(PACKAGE.parent)}:{line}: {module_name(path)} -> {target}"
              for path in SOURCES for line, target in imports(path, top_level_only=False)
              if LAYERS.index(layer(target)) > LAYERS.index(layer(module_name(path)))]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    graph = {module_name(p): {t for _, t in imports(p, top_level_only=True)} - {module_name(p)} for p in SOURCES}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def every_flag() -> set[str]:
    flags = set()
    for command in cli_main.SUBCOMMANDS:
        parser = cli_main._build_parser(command)
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        flags |= {option for action in sub.choices[command]._actions for option in action.option_strings}
    return flags


def library_parameters() -> set[str]:
    """Every parameter name of a function or class in the package, and every StudySpec field."""
    names = {f.name for f in dataclasses.fields(StudySpec)}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names |= {a.arg for a in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)  # dataclass fields
    return names


def test_the_flag_table_names_real_flags_for_real_parameters():
    flags, parameters = every_flag(), library_parameters()
    for name, text in cli_main.FLAGS.items():
        assert name in parameters, f"FLAGS maps {name!r}, which no library function takes"
        assert text.split()[0] in flags, f"FLAGS maps {name!r} to {text!r}, which no subcommand has"
    assert set(cli_main.NOT_FLAGS) <= parameters


def test_every_study_key_names_a_search_flag():
    search_flags = every_flag()
    for field in dataclasses.fields(StudySpec):
        text = cli_main.flag(field.name)
        assert field.name in cli_main.NOT_FLAGS or text.split()[0] in search_flags, (field.name, text)


def test_the_public_face_is_lazy_and_documented():
    face = inspect.getsource(saver_search)
    for name in saver_search.__all__:
        assert f"{name}" in face
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "search_spaces"):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and "May import" in " ".join(doc.split()), f"{folder.name}/__init__.py says what it holds and what it may import"
