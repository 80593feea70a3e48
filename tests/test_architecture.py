"""The package's layer order (README, "Architecture"): no import cycles, and no module imports from a later layer.

Every import counts, deferred ones inside functions included: a deferred import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hf_vtok"
# utils <- models <- mllm <- data <- evaluation <- trainer <- commands; hf_vtok/__init__.py sits on top
LAYERS = ("utils", "models", "mllm", "data", "evaluation", "trainer", "commands")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in a file, anywhere in it, with relative imports made absolute."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), [alias.name for alias in node.names]))
    return [(module, names) for module, names in found if module == "hf_vtok" or module.startswith("hf_vtok.")]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str | None:  # `from pkg import name` names either a module or an attribute of pkg
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    def targets(path: Path) -> set[str]:
        found = set()
        for module, names in _imports(path):
            # `from pkg import sub` depends on the submodule `sub` (when it is one), not on everything in `pkg`
            submodules = [f"{module}.{name}" for name in names if f"{module}.{name}" in files]
            found.update(submodules or [owner(module)])
        return found

    return {module: targets(path) - {None, module} for module, path in files.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # hf_vtok/__init__.py: the top
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is outside the layered packages {LAYERS}: give it a package")
    return LAYERS.index(parts[1])


def test_every_module_lives_in_a_layer(graph):
    for module in graph:
        _layer(module)


def test_no_module_imports_from_a_later_layer(graph):
    upward = [
        f"{module} ({LAYERS[_layer(module)]}) imports {target}"
        for module, targets in graph.items()
        if module != "hf_vtok"
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_a_family_never_imports_another_family(graph):
    crossing = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if module.startswith("hf_vtok.models.") and target.startswith("hf_vtok.models.")
        and module.split(".")[2] != target.split(".")[2] and len(module.split(".")) > 3 and len(target.split(".")) > 3
    ]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycles(graph):
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles
