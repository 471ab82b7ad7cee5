"""The ``gruxp`` command: train, sample, eval, info, bench.

Built on click (a well-kept, dependency-free CLI library with typed options and ranges) and tqdm
for progress; matplotlib, when installed, draws the loss curve. They come with the ``cli`` and
``plot`` extras, so ``import gruxp`` itself still needs only array-api-compat and NumPy.

Every failure a user can cause (bad data, bad numbers, a backend that is missing or has no device,
a checkpoint from another model or a damaged one) ends with ONE line on stderr and a non-zero exit
status, never a traceback; ``GRUXP_DEBUG=1`` shows the traceback instead. No failure writes over
an existing checkpoint: checkpoints are only ever replaced atomically by a newer good one.
"""

from __future__ import annotations

import os
import sys

EXIT_USAGE, EXIT_FAILURE = 2, 1


def _fail(message: str, code: int) -> None:
    print(f"gruxp: error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``gruxp`` and ``python -m gruxp``)."""
    try:
        import click
    except ImportError:
        _fail('the gruxp command needs its command-line extra: pip install ".[cli,plot]" in the clone of gruxp', EXIT_USAGE)
    from ..checkpoint import CheckpointError
    from .backends import BackendError
    from .commands import cli
    from .corpus import CorpusError

    debug = os.environ.get("GRUXP_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="gruxp", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # bare `gruxp` (click >= 8.2)
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None and exc.ctx.command_path != "gruxp" else ""
        _fail(where + exc.format_message(), EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), EXIT_FAILURE)
    except (CorpusError, BackendError, CheckpointError) as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_FAILURE)
    except (ValueError, TypeError, OSError, FloatingPointError) as exc:
        if debug:
            raise
        _fail(f"{exc.__class__.__name__}: {exc}", EXIT_FAILURE)
    except Exception as exc:  # a bug or a library failure: still one line, the traceback on request
        if debug:
            raise
        _fail(f"unexpected {exc.__class__.__name__}: {exc} (GRUXP_DEBUG=1 shows the traceback)", EXIT_FAILURE)
