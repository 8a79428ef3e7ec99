"""``python -m analysis.final_bound PATH ...`` in a checkout: :mod:`discograd.analysis.final_bound`."""
import sys

from discograd.analysis.final_bound import main

if __name__ == "__main__":
    sys.exit(main())
