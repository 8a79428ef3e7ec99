"""Errors discograd raises on purpose."""


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training starts (the message names
    the key, the bad value and the accepted ones)."""
