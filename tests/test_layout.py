"""The package's shape, read with ast (nothing imported): layers as folders, imports only downward.

Layers, lowest first: the shared base (``_validate``, ``cache``, ``training``), ``core`` (the
engine), ``sae``, ``worlds``, ``report`` and ``run``, ``chapters``, then ``build`` and
``testing`` on top. A module may import its own layer or any layer below it, never above; the
import graph has no cycle; no module imports another module's private (``_``) names; no module
is longer than ~600 lines; chapters never branch on a world's name.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "equidiff"
MAX_LINES = 600

# layer of each top-level part of the package (a higher number may import a lower one)
LAYERS = {
    "equidiff": 0, "_validate": 0, "cache": 0, "training": 0,
    "core": 1,
    "sae": 2,
    "worlds": 3,
    "report": 4, "run": 4,
    "chapters": 5,
    "build": 6, "testing": 6,
}


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


MODS = _modules(PKG)


def _resolve(cur: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = cur.split(".")
    if MODS[cur].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported package module, names taken from it) for every import of the package in ``name``."""
    tree = ast.parse(MODS[name].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "equidiff"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            if target.split(".")[0] != "equidiff":
                continue
            for a in node.names:  # `from equidiff.x import y`: y may be a module itself
                sub = f"{target}.{a.name}"
                out.append((sub, []) if sub in MODS else (target, [a.name]))
    return out


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["equidiff"]


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODS and t != m} for m in MODS}


def test_every_part_of_the_package_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODS if "." in m} - set(LAYERS))
    assert not unknown, f"give these parts of equidiff a layer in LAYERS: {unknown}"


def test_imports_only_go_down_the_layers():
    upward = []
    for m in MODS:
        if m == "equidiff":  # the public API re-exports from below
            continue
        for t, _ in _imports(m):
            if t in MODS and t != "equidiff" and _layer(t) > _layer(m):
                upward.append(f"{m} -> {t}")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_import_graph_has_no_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            # a package's __init__ importing its own submodules is not a cycle of the design
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    private = [f"{m} takes {t}.{n}" for m in MODS for t, names in _imports(m) for n in names
               if n.startswith("_") and not n.startswith("__") and t != m]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


@pytest.mark.parametrize("name", sorted(MODS))
def test_no_module_is_too_long(name):
    n = len(MODS[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (limit {MAX_LINES}): split it by concern"


def test_chapters_do_not_branch_on_the_world_name():
    found = []
    for m, p in MODS.items():
        if not m.startswith("equidiff.chapters"):
            continue
        src = p.read_text()
        for needle in ("is_paper", 'profile == "paper"', "profile == 'paper'", 'profile != "paper"',
                       'name == "paper"', "profile != 'paper'"):
            if needle in src:
                found.append(f"{m}: {needle}")
    assert not found, "chapters branch on a world's name instead of a capability:\n" + "\n".join(found)


def test_the_layering_test_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: a fake package with a cycle and an upward import is caught."""
    global MODS
    pkg = tmp_path / "equidiff"
    (pkg / "core").mkdir(parents=True)
    (pkg / "chapters").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "chapters" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from equidiff.chapters.b import f\n")
    (pkg / "chapters" / "b.py").write_text("from equidiff.core.a import _g\n")
    saved = MODS
    try:
        MODS = _modules(pkg)
        with pytest.raises(AssertionError, match="imports up the layers"):
            test_imports_only_go_down_the_layers()
        with pytest.raises(AssertionError, match="import cycles"):
            test_import_graph_has_no_cycle()
        with pytest.raises(AssertionError, match="private names"):
            test_no_private_name_is_imported_from_another_module()
    finally:
        MODS = saved

