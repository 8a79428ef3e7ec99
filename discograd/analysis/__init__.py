"""Post-processing of run folders: runs -> tidy DataFrames -> plots, tables and a report.

``python -m analysis PATH [--out DIR]``.
"""
__all__ = ["Collection", "collect", "find_runs", "read_run"]


def __getattr__(name: str):
    """The names of :mod:`.runs`, imported on first use: Hydra imports this package at the start
    of every run for its report callbacks (callbacks.py), and training must not pay for pandas."""
    if name in __all__:
        from . import runs
        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
