"""The `kdeploy` command line: parse, call the Python API, turn a UserError into one line + exit 2.

One module per command group; each registers its commands on the one Typer ``app`` (``kdeploy.cli.main``):

- ``main``       the app, the global options (``--quiet``, ``--debug``; accepted after the command too) and the
                 error handling every command shares
- ``options``    the option types and parsers several commands share
- ``tables``     the rich tables the commands print
- ``train``      ``distill``
- ``lists``      ``recipes``, ``models``, ``methods``, ``datasets`` (answer without importing torch)
- ``artifacts``  ``export``, ``quantize``
- ``bench``      ``bench``, ``report``
- ``pipeline``   ``run``

Heavy modules (torch, the stages) are imported inside command bodies only, so ``kdeploy --help`` answers at once.
"""

# The import order is the order of the commands in `kdeploy --help`.
# isort: off
from kdeploy.cli.main import app
from kdeploy.cli import train, lists, artifacts, bench, pipeline  # noqa: F401  (registers the commands)
# isort: on

__all__ = ["app"]
