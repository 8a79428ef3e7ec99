"""``python -m analysis PATH [--out DIR]`` in a checkout: :mod:`discograd.analysis`."""
import sys

from discograd.analysis.__main__ import main

sys.exit(main())
