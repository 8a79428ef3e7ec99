"""Shared fixtures: composed configs (Hydra's compose API, as ``python run.py`` would compose them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from discograd.experiment.config import compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg_of():
    """``cfg_of("model=toy", "estimator=st")``: the config of ``python run.py model=toy
    estimator=st``."""
    return lambda *overrides: compose_config(overrides)
