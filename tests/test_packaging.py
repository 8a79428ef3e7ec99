"""The package as installed: one top-level name, configs shipped in the wheel, the installed command
line, tab completion without the internal schema groups, and models that never import estimators."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_discograd_and_its_launcher_and_ships_the_configs(tmp_path):
    try:                                   # build offline when the build backend is installed
        import setuptools  # noqa: F401
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *isolation,
                    "-w", str(tmp_path), "-q"], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("discograd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"discograd", "hydra_plugins"}, tops
    # Hydra finds launchers only in its namespace package: ours is one subpackage there
    assert {n.split("/")[1] for n in names if n.startswith("hydra_plugins/")} == {"discograd_slurm"}
    configs = {n for n in names if n.startswith("discograd/configs/")}
    for need in ("config.yaml", "estimator/gumbel.yaml", "model/vae.yaml", "data/mnist.yaml",
                 "experiment/arm2019_linear.yaml", "hydra/launcher/slurm_gpu.yaml"):
        assert f"discograd/configs/{need}" in configs, need
    # every YAML of the checkout is in the wheel
    here = {f"discograd/{p.relative_to(ROOT / 'discograd')}" for p in (ROOT / "discograd" / "configs").rglob("*.yaml")
            if "local" not in p.parts}
    assert here <= configs, here - configs
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "discograd = discograd.cli:main" in text and "discograd-analysis" in text


def test_outside_the_checkout_only_discograd_is_importable(tmp_path):
    """`import models` in another project must not resolve to ours (the installed package is
    discograd.*); the installed command line composes its config from the package's configs."""
    code = ("import importlib.util as u, discograd;"
            "print([n for n in ('models', 'estimators', 'experiment', 'analysis') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.stdout.strip() == "[]", out.stdout
    job = subprocess.run([sys.executable, "-m", "discograd", "model=toy", "--cfg", "job"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert job.returncode == 0, job.stderr
    assert "name: gumbel" in job.stdout and "name: toy" in job.stdout


def _complete(line: str) -> list[str]:
    out = subprocess.run([sys.executable, "run.py", "-sc", "query=bash"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tab_completion_offers_the_groups_but_not_the_internal_schemas():
    top = _complete("python run.py ")
    assert {"estimator=", "model=", "data=", "experiment="} <= set(top), top
    assert not [w for w in top if w.startswith("schema")], top
    assert _complete("python run.py sch") == []
    estimators = _complete("python run.py estimator=")
    assert "estimator=disarm" in estimators and "estimator=gumbel" in estimators


def test_models_never_import_the_estimators():
    """The model never sees the estimator: models take their sampling helpers from
    discograd.latents, shared with the estimators."""
    for path in (ROOT / "discograd" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "estimators" not in mod, f"{path.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("estimators" in a.name for a in node.names), path.name


def test_models_never_import_the_harness():
    """The models read their config nodes themselves (models/registry.py) and take the data
    sets' image sides from discograd.images: nothing in discograd/models imports
    discograd.experiment, and no model module imports inside a function."""
    for path in (ROOT / "discograd" / "models").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                assert "experiment" not in mod, f"{path.name} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any("experiment" in a.name for a in node.names), path.name
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: {fn.name} imports at call time"


def _modules(package: str) -> list[str]:
    root = ROOT / package
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "__main__.py":          # runs the command line when imported
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_module_of_the_package_imports():
    """A module that fails to import (a missing dependency, a cycle at import time) fails here,
    not in a user's run: each module is imported in a fresh interpreter of this environment."""
    names = (_modules("discograd") + _modules("analysis") + _modules("benchmarks")
             + _modules("hydra_plugins/discograd_slurm"))
    code = ("import importlib, sys\nbad = []\nfor n in sys.argv[1:]:\n"
            "    try:\n        importlib.import_module(n)\n"
            "    except Exception as e:\n        bad.append(f'{n}: {e!r}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(names) > 60, names


def _third_party_imports() -> dict[str, set[str]]:
    """{top-level module name: files importing it} over the package and the checkout shortcuts,
    standard library and first-party names excluded."""
    first_party = {"discograd", "analysis", "benchmarks", "tests"}
    found: dict[str, set[str]] = {}
    for package in ("discograd", "analysis", "benchmarks", "hydra_plugins/discograd_slurm"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in first_party:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared_in_pyproject():
    """The scipy lesson: a package that is installed on the developer's machine but not declared
    passes every test there and breaks every fresh install. Each third-party module the code
    imports must come from a distribution that pyproject.toml names (dependencies, or an extra
    for the optional ones)."""
    import importlib.metadata as md
    import re
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    def names(reqs):
        return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}
    required = names(project["dependencies"])
    optional = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    dists = md.packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports().items():
        provided_by = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        if not provided_by & (required | optional):
            undeclared[module] = (sorted(provided_by), sorted(files))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    # the statistics of the tables are a core feature: scipy is a dependency, not an extra
    assert "scipy" in required
