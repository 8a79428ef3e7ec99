"""What the models' config schemas and config checks share: the latent kind, enum values as plain
strings, and the wording of an integer check (the same as experiment/validate.py's, so that every
refusal reads alike: ``model.KEY=value is invalid: ...``)."""
from __future__ import annotations

from enum import Enum

from discograd.errors import ConfigError


class Latent(Enum):
    bernoulli = "bernoulli"
    categorical = "categorical"


def plain(value):
    """Enum members as their values (what the constructors take); everything else unchanged."""
    return value.value if isinstance(value, Enum) else value


def int_at_least(key: str, value, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value} is invalid: it must be an integer >= {low}")


def latent_dim_or_default(latent_dim, kind: str) -> int:
    """``model.latent_dim``, or when null 200 Bernoulli units / 20 categorical variables (the
    papers' sizes)."""
    return latent_dim if latent_dim is not None else (200 if kind == "bernoulli" else 20)
