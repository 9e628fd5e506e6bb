"""What every ``callrec`` command shares: the Typer app, --version, and the one-line failures."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from callrec.cli.typer_fixes import adjust_typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="callrec: call recording for cloud telephony",
    # subcommands' contexts inherit it: -h works on every command
    context_settings={"help_option_names": ["-h", "--help"]},
)


adjust_typer()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("callrec")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from callrec import __version__ as shown
        print(f"callrec {shown}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """callrec: call recording for cloud telephony"""


def _fail(message: str) -> None:
    # one line, no traceback: the message is the whole story
    print(f"callrec: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _refused(command: str, exc: Exception) -> None:
    # a start that cannot succeed (data folder in use, address taken): one line naming the command, and
    # the exit status a supervisor does not retry
    from callrec.service.sanity import EXIT_REFUSED

    print(f"callrec {command}: {exc}", file=sys.stderr)
    raise typer.Exit(EXIT_REFUSED)


# options several long-running commands take
LogLevel = Annotated[str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error")]
HandToService = Annotated[
    bool,
    typer.Option(
        "--service/--no-service",
        help="Hand each tape to the service (database, storage, queue); on when CALLREC_DATABASE_URL is set",
    ),
]


def log_to_stderr(level: str) -> None:
    """Log lines on stderr at ``level`` (debug, info, warning or error)."""
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
