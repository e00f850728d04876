"""Data files shipped with qwbatch, read with ``importlib.resources``: ``models.toml``, the
model table (each model's endpoint, limits, size rule and price; see docs/manifest.md)."""
