"""The package's shape (docs/architecture.md): imports go one way, no module reaches into another's
private names, files and functions stay readable in one sitting."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pixel_diffusion"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) for every import in a module, in functions too."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = []
            for alias in node.names:  # `from . import checkpoints` imports a module, not the package's names
                if f"{target}.{alias.name}" in MODULES:
                    found.append((f"{target}.{alias.name}", []))
                else:
                    names.append(alias.name)
            if target in MODULES and names:
                found.append((target, names))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in MODULES]
    return found


GRAPH = {name: sorted({target for target, _ in _imports(name)} - {name}) for name in MODULES}


def test_the_package_has_no_import_cycle():
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for target in GRAPH[module]:
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])


DOCS = PACKAGE.parents[1] / "docs" / "architecture.md"


def _layer_rows() -> dict[str, int]:
    """Each module's line in docs/architecture.md's layer table: a file (`runs.py`) or a package
    (`samplers/`, every module in it) named in the modules column."""
    text = DOCS.read_text().split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    rows_of = {}
    for index, cells in enumerate(rows):
        for named in re.findall(r"`([\w/]+?)(?:\.py)?/?`", cells[2]):
            rows_of[f"pixel_diffusion.{named.strip('/').replace('/', '.')}"] = index
    return rows_of


def _row(module: str, rows: dict[str, int]) -> int | None:
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in rows:
            return rows[".".join(parts[:end])]
    return None


def test_every_module_imports_only_from_the_lines_above_it_in_the_layer_table():
    rows = _layer_rows()
    outside = ("pixel_diffusion", "pixel_diffusion.__main__")  # the package's front door
    missing = [name for name in MODULES if name not in outside and _row(name, rows) is None]
    assert not missing, f"modules the layer table does not name: {missing}"
    upward = [f"{name} (line {_row(name, rows)}) imports {target} (line {_row(target, rows)})"
              for name in MODULES if name not in outside for target in GRAPH[name]
              if target not in outside and _row(target, rows) > _row(name, rows)]
    assert not upward


def test_no_module_imports_a_private_name_of_another():
    crossings = [f"{name} imports {target}.{imported}" for name in MODULES for target, names in _imports(name)
                 for imported in names if imported.startswith("_") and not imported.startswith("__") and target != name]
    assert not crossings


def test_files_and_functions_are_readable_in_one_sitting():
    long_files = [f"{name}: {n} lines" for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600]
    long_functions = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long_files and not long_functions
