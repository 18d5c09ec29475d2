"""The project's import graph, parsed from the source (nothing imported): no cycles, and the
layers point down. `fer_models` and `search_spaces` never import `runners`, Ray or MLflow;
`fer_models` never imports `search_spaces`. The CLI's command groups, loaded by name
(`COMMAND_GROUPS`), count as imports of `runners.cli`."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fer_models", "search_spaces", "runners")
FORBIDDEN = {
    "fer_models": ("runners", "search_spaces", "ray", "mlflow"),
    "search_spaces": ("runners", "ray", "mlflow"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Every module `name` imports, anywhere in the file (functions included): the absolute name of
    each `import x` / `from x import y` (y itself when it is a module), relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known)
    if name == "runners.cli":  # the command groups, imported by name
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMAND_GROUPS" for t in node.targets):
                out.update(v.value for v in node.value.values)
    return out


def graph() -> Dict[str, Set[str]]:
    mods = modules()
    known = set(mods)
    g: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for imp in imports_of(name, path, known):
            # `import a.b.c` also runs a and a.b: an edge to the deepest project module named
            while imp and imp not in known:
                imp = imp.rpartition(".")[0]
            # a submodule naming its own package (`from . import cache`) is no edge: the package's
            # __init__ always runs before its submodules
            if imp and imp != name and not name.startswith(imp + "."):
                deps.add(imp)
        g[name] = deps
    return g


def cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def external_imports(name: str, path: Path) -> Set[str]:
    return imports_of(name, path, set(modules()))


def test_the_graph_is_read():
    g = graph()
    # a few edges every version of the project has: the parser sees function-level imports too
    assert "fer_models.model" in g and "runners.cli" in g
    assert "runners.commands.search" in g["runners.cli"]
    assert any(d.startswith("fer_models") for d in g["search_spaces.config"])


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_cycle_detection_finds_a_cycle():
    # the checker itself: a two-module and a three-module cycle beside an acyclic part
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(g)) == [["a", "b"], ["c", "d", "e"]]


def test_layers_point_down():
    bad = []
    for name, path in sorted(modules().items()):
        top = name.split(".")[0]
        for imp in sorted(external_imports(name, path)):
            for banned in FORBIDDEN.get(top, ()):
                if imp == banned or imp.startswith(banned + "."):
                    bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_runners_grouped_by_stage():
    # issue 14: one folder per stage a user meets; only the CLI and the exit codes stay at the top
    top = sorted(p.stem for p in (REPO / "runners").glob("*.py"))
    assert top == ["__init__", "cli", "errors"], top
    for stage in ("training", "search", "registry", "serving", "data", "commands"):
        assert (REPO / "runners" / stage / "__init__.py").is_file(), stage
