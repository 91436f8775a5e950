"""Where code lives: the import rules of DEVELOPERS.md, checked on the source (no module is imported here).

- `layer1_patches/shared/` is the platform of all three layers and imports nothing from any layer's domain;
- no upward imports: Layer 1 never imports Layers 2 or 3, Layer 2 never imports Layer 3;
- no import cycles between modules, counting function-level imports too (they keep heavy dependencies off a
  command's start-up path, not a way around a cycle);
- no module over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("layer1_patches", "layer2_training", "layer3_inference")
RANK = {name: i for i, name in enumerate(PACKAGES)}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


MODULES = sources()


def _resolve(name: str) -> str | None:
    """The project module an import names (a package's `__init__` for a package), or None for third parties."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, top_level_only: bool) -> set[str]:
    """Project modules `module` imports; `from pkg import name` counts `pkg.name` when that is a module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


def test_the_source_tree_is_found() -> None:
    # guards every rule below against passing on an empty tree
    assert {"layer1_patches.shared.errors", "layer2_training.train", "layer3_inference.infer"} <= set(MODULES)
    assert "layer1_patches.shared.errors" in imports("layer1_patches.config", top_level_only=True)


def test_shared_imports_no_domain_code() -> None:
    shared = [m for m in MODULES if m.startswith("layer1_patches.shared")]
    assert len(shared) >= 7
    bad = {m: sorted(t for t in imports(m, top_level_only=False)
                     if t != "layer1_patches" and not t.startswith("layer1_patches.shared"))
           for m in shared}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_upward_imports() -> None:
    bad = {}
    for module in MODULES:
        mine = RANK[module.split(".")[0]]
        up = sorted(t for t in imports(module, top_level_only=False) if RANK[t.split(".")[0]] > mine)
        if up:
            bad[module] = up
    assert bad == {}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    # a package's __init__ that its own submodule imports is not a cycle of modules: Python runs __init__ first
    graph = {m: {t for t in imports(m, top_level_only=False) if not m.startswith(t + ".")} for m in MODULES}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines; split it by pipeline step"


def test_every_source_folder_is_an_installed_package() -> None:
    """Regression: `layer1_patches/shared/` had no `__init__.py`, so `packages = find:` left the platform out of
    every non-editable install (the container image): each command failed with ModuleNotFoundError."""
    from setuptools import find_packages

    found = set(find_packages(str(REPO), include=[f"{p}*" for p in PACKAGES]))
    folders = {module_name(p.parent / "__init__.py") for p in REPO.glob("layer*/**/*.py")}
    assert folders - found == set()
