"""``python -m analysis.reproduce PRESET ...`` in a checkout: :mod:`discograd.analysis.reproduce`."""
import sys

from discograd.analysis.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
