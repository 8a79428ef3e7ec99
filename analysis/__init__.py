"""Post-processing of run folders: runs -> tidy DataFrames (plots and tables build on these)."""
from .runs import find_runs, read_run

__all__ = ["find_runs", "read_run"]
