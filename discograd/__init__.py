"""discograd: compare gradient estimators for discrete latent variables.

Subpackages: ``estimators`` (one module per estimator), ``models`` (the objectives f),
``experiment`` (config, training loop, diagnostics, files), ``analysis`` (runs -> plots and tables).
The command line is :mod:`discograd.cli` (``python run.py`` in a checkout, ``discograd`` or
``python -m discograd`` once installed); the design and contracts are in docs/design.md.
"""
__version__ = "0.1.0"
