"""``hydra/launcher=slurm`` (and the ``slurm_cpu`` / ``slurm_gpu`` presets built on it): Hydra's
submitit SLURM launcher, with two differences a sweep of discograd runs needs.

1. **A job that SLURM ends without a result does not end the sweep.** Hydra's launcher collects
   the jobs' results in order and raises at the first job that produced none (``scancel``, a node
   failure, a time limit without requeue): the sweep then stops with a traceback while later jobs
   still run, and the sweep report is written too early or not at all. Here every job is waited
   for; one without a result is logged in one line (its SLURM state) and counts as a job that
   returned nothing, as a failed job does under the joblib launcher. Its own folder says what
   happened (``summary.json``: ``interrupted`` with the signal and step, or no summary at all), and
   the sweep report and the exit code (4) list it.
2. **Requeue on timeout**: ``max_num_timeout: 3`` (Hydra's default 0 lets a job that reaches its
   time limit die). A run catches submitit's timeout signal (SIGUSR2, ``signal_delay_s`` before the
   limit), writes its checkpoint at the next step boundary and hands the signal to submitit, which
   requeues the job; the requeued job resumes from the checkpoint (experiment/lifecycle.py).

Everything else (the ``hydra.launcher.*`` keys, the pickled job, the ``.submitit`` folder) is the
plugin's: ``hydra-submitit-launcher`` documents the keys.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _HydraSlurm
from omegaconf import OmegaConf

log = logging.getLogger("discograd")

#: keys that configure submitit's executor itself rather than the sbatch parameters
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")


class SlurmLauncher(_HydraSlurm):
    """Submit one SLURM job per run (an array), wait for all of them, and return one result per
    job: the run's return value, or None for a job that ended without one (see the module)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
            **({f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]}
               if "max_num_timeout" in self.params else {}))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())      # not prefixed by "slurm_"
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in _EXECUTOR_KEYS})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:          # hydra.sweep.mode, as Hydra's launchers
            os.chmod(sweep_dir, int(str(self.config.hydra.sweep.mode), 8))
        log.info("SLURM sweep of %d job(s) into %s", len(job_overrides), sweep_dir)
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for n, overrides in zip(numbers, job_overrides):
            log.info("\t#%d : %s", n, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        jobs = executor.map_array(self, [list(o) for o in job_overrides],
                                  ["hydra.sweep.dir"] * len(numbers), numbers,
                                  [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
        return [self._collect(job, n, overrides)
                for job, n, overrides in zip(jobs, numbers, job_overrides)]

    @staticmethod
    def _collect(job, number: int, overrides: Sequence[str]) -> JobReturn:
        from submitit.core.utils import UncompletedJobError
        try:
            return job.results()[0]
        except UncompletedJobError:
            # the job's folder holds what it wrote (summary.json says interrupted and where, or
            # there is none); the sweep report lists it, and the command exits 4
            log.error("job %d (SLURM job %s) ended without a result: SLURM state %s",
                      number, job.job_id, job.state)
        ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        ret.return_value = None
        return ret
