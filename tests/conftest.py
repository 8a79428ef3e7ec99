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
