"""The package's shape (docs/architecture.md): imports go one way, no module reaches into another's
private names, files and functions stay readable in one sitting."""

import ast
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


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize("lower, upper", [
    ("pixel_diffusion.runs", "pixel_diffusion.training"),
    ("pixel_diffusion.runs", "pixel_diffusion.viz"),
    ("pixel_diffusion.runs", "pixel_diffusion.cli"),
    ("pixel_diffusion.viz", "pixel_diffusion.training"),
    ("pixel_diffusion.editing", "pixel_diffusion.runs"),
    ("pixel_diffusion.samplers", "pixel_diffusion.runs"),
    ("pixel_diffusion.metrics", "pixel_diffusion.training"),
])
def test_imports_go_one_way(lower, upper):
    assert upper not in _reaches(lower), f"{lower} imports {upper}, which sits above it"


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
