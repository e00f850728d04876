"""The package's version, one place for the User-Agent and the catalog."""

__version__ = "0.1.0"
