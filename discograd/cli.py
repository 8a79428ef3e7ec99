"""discograd command line: ``python run.py estimator=NAME model=NAME [key=value ...]``
(``discograd ...`` or ``python -m discograd ...`` once installed).

Hydra composes the config from ``discograd/configs/`` (groups estimator/, model/, data/,
experiment/) and creates the run folder; :func:`discograd.experiment.train.hydra_entry` does the rest.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from discograd.experiment.config import register_configs

_HELP = any(a in ("--help", "-h") for a in sys.argv[1:])
if not _HELP:
    # at import, not in main(): launcher workers (joblib, submitit) import this module to unpickle
    # the task and compose its config, and need the schemas registered there too
    register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from discograd.experiment.train import hydra_entry   # heavy imports after composition
    return hydra_entry(cfg)


def _hide_schema_groups_from_completion() -> None:
    """The estimator/model/data schemas are ConfigStore groups (``schema/...``) that the YAMLs
    extend; they are not options a user picks, so tab completion does not offer them."""
    from hydra.plugins.completion_plugin import CompletionPlugin
    query = CompletionPlugin._query_config_groups

    def filtered(self, word, config_name, words):
        matches, exact = query(self, word, config_name, words)
        return [m for m in matches if not m.lstrip("+~").startswith("schema")], exact
    CompletionPlugin._query_config_groups = filtered


def main() -> float | None:
    if _HELP:
        from discograd.experiment.config import help_text   # ours: no internal schema groups
        print(help_text())
        sys.exit(0)
    if any(a in ("-sc", "--shell-completion") for a in sys.argv[1:]):
        _hide_schema_groups_from_completion()
    return _app()


if __name__ == "__main__":
    main()
