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


def test_the_wheel_installs_one_top_level_name_and_ships_the_configs(tmp_path):
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
    assert {t for t in tops if not t.endswith(".dist-info")} == {"discograd"}, tops
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
