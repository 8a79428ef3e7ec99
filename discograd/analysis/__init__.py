"""Post-processing of run folders: runs -> tidy DataFrames -> plots, tables and a report.

``python -m analysis PATH [--out DIR]``.
"""
from .runs import Collection, collect, find_runs, read_run

__all__ = ["Collection", "collect", "find_runs", "read_run"]
