"""Checkout shortcut: ``python -m analysis PATH`` (and ``python -m analysis.attention_maps``) in a
clone of the repository run :mod:`discograd.analysis`. Not installed: once installed, the same
commands are ``discograd-analysis PATH`` and ``python -m discograd.analysis.attention_maps``."""
from discograd.analysis import *  # noqa: F401,F403
