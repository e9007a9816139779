"""The Typer app, the global options and the error handling every command shares."""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from kdeploy import progress
from kdeploy.errors import GateFailed, UserError, os_error_message

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="kdeploy: distill a large PyTorch model into a small one, export, quantize and benchmark it.",
)
console = Console(stderr=True)  # messages and errors
out = Console()  # results (tables), on stdout

F = TypeVar("F", bound=Callable[..., Any])

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="plain log lines instead of progress bars")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks for user errors too")]


@dataclass
class Settings:
    """The global options, as given before or after the command name."""

    quiet: bool = False
    debug: bool = False


settings = Settings()
RESUMABLE = {"distill", "run_all"}  # commands with --resume


def configure(quiet: bool, debug: bool) -> None:
    """Apply the global options: the reporter the library's progress goes through, and tracebacks."""
    settings.quiet, settings.debug = quiet, debug
    if sys.stderr.isatty() and not quiet:
        from kdeploy.cli.reporter import RichReporter

        progress.set_reporter(RichReporter(console))
    else:
        progress.set_reporter(progress.LogReporter(quiet=quiet))


def say(message: str) -> None:
    """One line on stderr, printed as is (no markup, no wrapping)."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def handle_errors(fn: F) -> F:
    """User errors: one line and exit 2. Missed gates: exit 1. Bugs: a traceback (always with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if settings.debug:
                traceback.print_exc()
            say(f"error: {exc}")
            raise typer.Exit(2) from None
        except GateFailed as exc:
            say(f"gate failed: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            how = "the same command with --resume" if fn.__name__ in RESUMABLE else "the same command again"
            say(f"interrupted: nothing partial was written; continue with {how}")
            raise typer.Exit(130) from None
        except OSError as exc:  # disk full, read-only or missing folder: the user's to fix; anything else is a bug
            message = os_error_message(exc)
            if message is None or settings.debug:
                raise
            say(f"error: {message}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def with_global_options(fn: F) -> F:
    """Add ``--quiet``/``--debug`` to a command: ``kdeploy distill R --quiet`` works like ``kdeploy -q distill R``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool = False, debug: bool = False, **kwargs: Any) -> Any:
        if quiet or debug:
            configure(quiet or settings.quiet, debug or settings.debug)
        return fn(*args, **kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("quiet", keyword, default=False, annotation=QuietOpt),
        inspect.Parameter("debug", keyword, default=False, annotation=DebugOpt),
    ]
    signature = inspect.signature(fn, eval_str=True)  # typer reads __signature__ as is
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def command(name: str | None = None) -> Callable[[F], F]:
    """Register a command on ``app`` with the shared error handling and global options."""

    def decorator(fn: F) -> F:
        app.command(name)(with_global_options(handle_errors(fn)))
        return fn

    return decorator


@app.callback()
def main(quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    configure(quiet, debug)
