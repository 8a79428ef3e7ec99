"""``python -m discograd ...``: the same command line as ``python run.py ...``."""
from discograd.cli import main

main()
