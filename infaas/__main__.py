"""``python -m infaas``: the ``infaas`` command, for subprocesses that must use this interpreter."""

from infaas.cli import main

main()
