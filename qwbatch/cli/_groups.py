"""Imports every command module so its commands register on ``qwbatch.cli.app.app``.

Add one import line per new module; keep the modules themselves thin. (``import x as x``
marks the import as wanted, and keeps one module a line, so additions merge cleanly.)
"""

# First: `run` and its siblings lead the command list in --help.
from qwbatch.cli import run as run

# isort: split
from qwbatch.cli import catalog as catalog
from qwbatch.cli import compare as compare
from qwbatch.cli import contact_sheet as contact_sheet
from qwbatch.cli import costs as costs
from qwbatch.cli import export as export
from qwbatch.cli import limits as limits
from qwbatch.cli import lineage as lineage
from qwbatch.cli import manifest as manifest
from qwbatch.cli import text_check as text_check
