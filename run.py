"""discograd command line: ``python run.py estimator=NAME model=NAME [key=value ...]``.

Hydra composes the config from ``configs/`` (groups estimator/, model/, data/, experiment/) and
creates the run folder; :func:`experiment.train.main` does the rest.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

if __name__ == "__main__" and any(a in ("--help", "-h") for a in sys.argv[1:]):
    from experiment.config import help_text      # ours: no internal schema groups, no torch import
    print(help_text())
    sys.exit(0)

from experiment.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from experiment.train import hydra_entry   # heavy imports after composition (fast --help)
    return hydra_entry(cfg)


if __name__ == "__main__":
    main()
