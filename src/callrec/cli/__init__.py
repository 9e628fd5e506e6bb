"""The ``callrec`` command line: one Typer app, a module per group of commands.

``mix`` (cli/mix.py) starts light; ``record``, ``serve`` and ``worker`` (cli/service.py) load what they run
inside the command, and so does ``capture`` (cli/capture.py, live capture from an interface); ``keys``
(cli/keys.py) works on the database directly.
"""

from __future__ import annotations

from callrec.cli import capture as _capture  # noqa: F401 - registers the command
from callrec.cli import mix as _mix  # noqa: F401 - registers the command
from callrec.cli import service as _service  # noqa: F401 - registers the commands
from callrec.cli.common import app
from callrec.cli.keys import keys_app


@app.command("version")
def version_command() -> None:
    """Print the version."""
    from callrec import __version__

    print(__version__)


app.add_typer(keys_app, name="keys")

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``callrec`` script."""
    app()
