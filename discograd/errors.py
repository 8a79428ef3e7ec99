"""Errors discograd raises on purpose, and the exit codes of the command line (README, "Exit
codes")."""

EXIT_OK = 0
EXIT_INVALID = 2          # a refused configuration or command (before any work)
EXIT_DIVERGED = 3         # the run diverged (summary.json status diverged)
EXIT_SWEEP_INCOMPLETE = 4  # a sweep ended with jobs that did not complete (listed in its report)
EXIT_DATA = 66            # the data could not be found, fetched or verified (EX_NOINPUT)
EXIT_IO = 74              # the run folder could not be written: disk full, read-only (EX_IOERR)
EXIT_BUSY = 75            # the run folder is in use by another process (EX_TEMPFAIL)


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training starts (the message names
    the key, the bad value and the accepted ones)."""
