"""discograd command line in a checkout: ``python run.py estimator=NAME model=NAME [key=value ...]``.

The app is :mod:`discograd.cli`; installed, the same command is ``discograd ...``.
"""
from discograd.cli import main

if __name__ == "__main__":
    main()
