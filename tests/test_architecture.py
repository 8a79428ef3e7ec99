"""The map of the package (docs/design.md, "Modules and imports"), checked from the source: the
import graph of discograd/ has no cycle, the training harness never imports the analysis, and no
module of the harness is longer than one sitting's reading."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "discograd"
HARNESS_MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The discograd modules that module ``name`` imports, anywhere in its source (a function-
    level import counts: a lazy import cycle is still a cycle). ``from P import X`` is an import of
    module P.X when that is a module, else of P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "discograd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "discograd":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: imports_of(n, p, known) for n, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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


def test_the_cycle_finder_finds_a_planted_cycle():
    """The tester's own test: a cycle of three and a lazy-import cycle are found; a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    src = "def f():\n    from discograd.x import y\n"
    tmp = ROOT.parent / "tests" / "_probe_import.py"
    try:
        tmp.write_text(src)
        assert imports_of("discograd.z", tmp, {"discograd.x", "discograd.x.y", "discograd.z"}) \
            == {"discograd.x.y"}
    finally:
        tmp.unlink()


def test_the_package_has_no_import_cycle():
    g = graph()
    assert len(g) > 50 and "discograd.experiment.train" in g["discograd.experiment.entry"]
    assert cycles(g) == []


def test_the_harness_never_imports_the_analysis():
    """discograd/experiment writes files; discograd/analysis reads them. The reports are written
    by Hydra callbacks (discograd/analysis/callbacks.py), configured in configs/config.yaml."""
    g = graph()
    bad = {m: sorted(t for t in ts if t.startswith("discograd.analysis"))
           for m, ts in g.items() if m.startswith("discograd.experiment")}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    config = (ROOT / "configs" / "config.yaml").read_text()
    assert "discograd.analysis.callbacks.RunReport" in config
    assert "discograd.analysis.callbacks.SweepReport" in config


def test_the_library_does_not_import_the_harness():
    """Estimators, models, latents, the step, the probe and the data are a library: none of them
    imports discograd.experiment (the runner is one of their users)."""
    g = graph()
    library = [m for m in g if (m.split(".") + [""])[1] in
               ("estimators", "models", "latents", "step", "diagnostics", "data", "files", "optim")]
    assert len(library) > 30
    assert {m: sorted(t for t in g[m] if t.startswith("discograd.experiment")) for m in library
            if any(t.startswith("discograd.experiment") for t in g[m])} == {}


@pytest.mark.parametrize("path", sorted((ROOT / "experiment").glob("*.py")), ids=lambda p: p.name)
def test_harness_modules_are_readable_in_one_sitting(path):
    assert len(path.read_text().splitlines()) <= HARNESS_MAX_LINES
