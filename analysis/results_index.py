"""``python -m analysis.results_index [DIR]`` in a checkout: :mod:`discograd.analysis.results_index`."""
import sys

from discograd.analysis.results_index import main

if __name__ == "__main__":
    sys.exit(main())
