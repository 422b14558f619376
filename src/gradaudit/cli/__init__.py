"""Command-line interface: thin commands over :mod:`gradaudit.api` (and the other public API functions).

    gradaudit demo [--out DIR]
    gradaudit attack --out DIR [--config FILE] [--set key=value ...] [options]
    gradaudit attack --observation FILE --out DIR [--attack PRESET ...]
    gradaudit observation inspect|validate|export ...
    gradaudit audit DEPLOYMENT --out DIR
    gradaudit evaluate SWEEP --out RUN_DIR      gradaudit utility --out RUN_DIR     gradaudit report RUN_DIR
    gradaudit vulnerability [--validate]        gradaudit bounds                    gradaudit prior train|meta-learn
    gradaudit list

Bad input (a :class:`~gradaudit.errors.GradauditError`, a file-system error, a usage error) exits with status 2
and one line on stderr, before any work or any file is created; ``--debug`` shows the traceback instead.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from ..checks import one_line
from ..errors import GradauditError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="gradaudit: how much of a client's private data can be rebuilt from its update?")
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")):
    _state["debug"] = debug


from . import attack, audit, bounds, evaluate, observation, prior, results, victim, vulnerability  # noqa: E402

for _module in (attack, observation, vulnerability, evaluate, audit, results, bounds, prior, victim):
    _module.register(app)


def _error(message: str) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors -> one line on stderr and exit status 2 (``--debug`` re-raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = False
    debug = lambda: "--debug" in argv or _state["debug"]  # noqa: E731
    try:
        result = app(args=argv, standalone_mode=False, prog_name="gradaudit")
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except GradauditError as e:
        if debug():
            raise
        return _error(str(e))
    except OSError as e:  # a path the user gave: missing, unreadable, a folder, a full disk
        if debug():
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return _error(f"{e.strerror or e}{where}")
    except Exception as e:  # click's usage errors (typer vendors click; match them by their interface)
        if hasattr(e, "format_message") and hasattr(e, "exit_code") and not debug():
            message = e.format_message()
            if not message:  # no command given: the help was printed
                return 0
            _error(message)
            return int(e.exit_code) or 2
        raise
    return result if isinstance(result, int) else 0


def _entry() -> None:
    sys.exit(main())


__all__ = ["app", "main"]
