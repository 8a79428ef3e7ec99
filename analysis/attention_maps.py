"""``python -m analysis.attention_maps RUN_DIR`` in a checkout: :mod:`discograd.analysis.attention_maps`."""
import sys

from discograd.analysis.attention_maps import main

if __name__ == "__main__":
    sys.exit(main())
