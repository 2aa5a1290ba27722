"""The ``infaas`` command line (Typer). Server commands run locally; the rest talk to ``INFAAS_URL``."""

from infaas.cli.main import app

__all__ = ["app"]
