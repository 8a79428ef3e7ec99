"""Shared fixtures: composed configs (Hydra's compose API, as ``python run.py`` would compose them)."""
from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # before torch loads: `pytest -n 2` on 2 cores runs two workers side by side, and two
    # processes of 2 spinning OpenMP threads each stall each other (discograd/threads.py: 50x
    # slower); one thread per worker is the count discograd.threads would choose for the second
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from discograd.experiment.config import compose_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg_of():
    """``cfg_of("model=toy", "estimator=st")``: the config of ``python run.py model=toy
    estimator=st``."""
    return lambda *overrides: compose_config(overrides)


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked slow: the README's commands, end-to-end runs) first, so that
    `pytest -n 2` ends with short tests on both workers instead of one long one on one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running SLURM cluster for the tests marked ``slurm`` (``python -m pytest -m slurm``, run
    by .ci/run): the machine's own if ``sinfo`` reaches one, else the one-node cluster of
    scripts/local-slurm.sh, started here (root or sudo, apt) and stopped at the end."""
    import shutil
    import subprocess
    script = ROOT / "scripts" / "local-slurm.sh"

    def up() -> bool:
        return bool(shutil.which("sinfo")) and subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0
    started = False
    if not up():
        r = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"no SLURM cluster, and {script} start failed:\n{r.stdout}\n{r.stderr}")
        started = True
    yield
    if started:
        subprocess.run([str(script), "stop"], capture_output=True, text=True, timeout=120)
