"""discograd command line: ``python run.py estimator=NAME model=NAME [key=value ...]``
(``discograd ...`` or ``python -m discograd ...`` once installed).

Hydra composes the config from ``discograd/configs/`` (groups estimator/, model/, data/,
experiment/) and creates the run folder; :func:`discograd.experiment.entry.hydra_entry` does the rest.
"""
from __future__ import annotations

import sys

from discograd.threads import configure_threads

try:
    # before torch is imported (hydra_entry imports it): OpenMP reads OMP_NUM_THREADS once, at load
    configure_threads()
except ValueError as e:                          # a bad DISCOGRAD_THREADS: a message, not a trace
    print(f"discograd: {e}", file=sys.stderr)
    sys.exit(2)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from discograd.experiment.config import register_configs  # noqa: E402

_HELP = any(a in ("--help", "-h") for a in sys.argv[1:])
if not _HELP:
    # at import, not in main(): launcher workers (joblib, submitit) import this module to unpickle
    # the task and compose its config, and need the schemas registered there too
    register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from discograd.experiment.entry import hydra_entry   # heavy imports after composition
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
    # every job composed and validated before Hydra makes a folder or starts a job
    from discograd.experiment.launch import precheck
    precheck(sys.argv[1:])
    from discograd.analysis.callbacks import RUNNING_ELSEWHERE, SWEEP, finish_sweep
    try:
        result = _app()
    except SystemExit:
        if not SWEEP:
            raise
        result = None        # a launcher that failed (Hydra said why) never called the callback
    from discograd.experiment.entry import OUTCOME
    if OUTCOME.get("exit"):                     # a single run that diverged (its report written)
        sys.exit(OUTCOME["exit"])
    finish_sweep()
    incomplete = SWEEP.get("incomplete")
    if incomplete and all(status == RUNNING_ELSEWHERE for _, status, _ in incomplete):
        from discograd.errors import EXIT_BUSY       # nothing failed: another sweep has them
        lines = [f"  {job}: {error}" for job, _, error in incomplete]
        print(f"discograd: {len(incomplete)} job(s) of the sweep in {SWEEP['dir']} are being run "
              "by another process, which writes their results there:\n" + "\n".join(lines)
              + "\nrerun this command when it has ended to report them", file=sys.stderr, flush=True)
        sys.exit(EXIT_BUSY)
    if incomplete:
        from discograd.errors import EXIT_SWEEP_INCOMPLETE
        report = SWEEP["dir"] / "analysis" / "report.md"
        lines = [f"  {job}: {status}" + (f": {error}" if error else "")
                 for job, status, error in incomplete]
        print(f"discograd: {len(incomplete)} job(s) of the sweep in {SWEEP['dir']} did not "
              "complete:\n" + "\n".join(lines)
              + (f"\nreport: {report}" if report.exists() else ""), file=sys.stderr, flush=True)
        sys.exit(EXIT_SWEEP_INCOMPLETE)
    return result


if __name__ == "__main__":
    main()
