"""Imports every command module so its commands register on ``qwbatch.cli.app``.

Add one import line per new module; keep the modules themselves thin.
"""

from qwbatch.cli import lineage  # noqa: F401
