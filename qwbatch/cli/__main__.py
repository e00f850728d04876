"""``python -m qwbatch.cli``: the same as the ``qwbatch`` command."""

from qwbatch.cli import main

main()
