"""Hydra config groups (a package so that an installed discograd finds them: pkg://discograd.configs)."""
