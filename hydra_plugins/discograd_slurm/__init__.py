"""discograd's SLURM launcher for Hydra (``hydra/launcher=slurm``): Hydra finds launchers only in the
``hydra_plugins`` namespace package, so it lives here, outside ``discograd``."""
