"""The one-line error machinery every command uses (feature-cache, extract-features, train-student, compare-runs).

A user's mistake (a bad option, cache, corpus, checkpoint or design) is a UserError: the CLI prints it as one line
naming the thing and the fix, and exits 2. Environment errors (OSError) are one line too; anything else is a bug and
keeps its traceback. click's own usage errors are one line as well (OneLineCommand, OneLineGroup).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import click


class UserError(ValueError):
    """Base of every error a user reads as one line: store.errors.CacheError, extract's, train's configuration,
    design and checkpoint errors."""


def _first_words(e: BaseException) -> str:
    """The user's message of an error: a DataLoader worker's re-raise carries the whole worker traceback, whose last
    line is the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text or type(e).__name__  # a list of bad files is one line per file, on purpose


def _refuse(line: str) -> None:
    """Print the one line and exit 2. Under torchrun, also hand it to the launcher (its per-rank error file, in
    torch.distributed.elastic's format): its failure report then quotes this line, not "To enable traceback see...",
    and `python -m train.torchrun` prints it as the last line."""
    click.echo(line, err=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        try:
            with open(error_file, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:
            pass  # the line is printed; the launcher's report falls back to its own text
    sys.exit(2)


#: What the SIGTERM handler runs before it exits, in order. Modules below this one register here (store.fs: temp files in
#: flight; store.lock: locks this process holds), so this module imports none of them: arrows point down only.
AT_SIGTERM: list[Callable[[], None]] = []


def cli_errors(kept: str | Callable[[], str] = "nothing was changed"):
    """User errors print as one line on stderr and exit 2; Ctrl-C and SIGTERM print what was kept and exit 130
    (`kept`: the words, or a function that says them when it happens: what is kept may depend on how far the run got).

    Environment errors (OSError: permissions, a full disk, a path that is a file) are one line too; any other
    exception is a bug and keeps its traceback."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _exit_on_sigterm(kept))
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                _refuse(f"error: {_first_words(e)}")
            except OSError as e:
                where = f"{e.filename}: " if getattr(e, "filename", None) else ""
                _refuse(f"error: {where}{e.strerror or _first_words(e)}; check the path, its permissions and free space")
            except KeyboardInterrupt:
                click.echo(f"interrupted: {_said(kept)}", err=True)
                sys.exit(130)

        return wrapper

    return decorate


def _said(kept: str | Callable[[], str]) -> str:
    return kept() if callable(kept) else kept


def _exit_on_sigterm(kept: str | Callable[[], str]):
    """SIGTERM (a scheduler's time limit, `kill`): the same line as Ctrl-C, then exit at once. Not an exception:
    one raised from a signal handler can land in a weakref callback or __del__, where Python swallows it and the
    run goes on. Exiting without cleanup loses nothing: work is published by commit markers and atomic
    checkpoints, and the next run removes what an interrupted attempt left."""

    def handler(signum, frame) -> None:
        import multiprocessing

        # torch's DataLoader raises from its SIGCHLD handler when a worker dies: inside this handler, as the children go,
        # that error would escape it and the run would end "a data loader worker died" instead of "interrupted"
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for cleanup in list(AT_SIGTERM):  # os._exit runs no atexit: temp files in flight, locks held (store.fs, store.lock)
            cleanup()
        children = multiprocessing.active_children()  # verify's workers: left alive they would hold our output pipes
        for child in children:
            child.terminate()
        for child in children:
            child.join(5)
        sys.stderr.write(f"interrupted: {_said(kept)}\n")
        sys.stderr.flush()
        os._exit(130)

    return handler


one_line_errors = cli_errors()


class _OneLineUsage:
    """click prints a usage error as four lines (usage, hint, blank, error); ours is one line that names the option."""

    def main(self, *args, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted: nothing was changed", err=True)
            sys.exit(1)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()} (see {self.name} --help)", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


class OneLineCommand(_OneLineUsage, click.Command):
    pass


class OneLineGroup(_OneLineUsage, click.Group):
    pass


def parse_layers(value: str) -> tuple[int, ...]:
    """A --layers value (`4,8,12`) of any command: distinct non-negative numbers, or one usage line."""
    try:
        layers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated layer numbers, e.g. 4,8,12", param_hint="'--layers'") from None
    if not layers or any(k < 0 for k in layers) or len(set(layers)) != len(layers):
        raise click.BadParameter(f"{value!r}: give distinct non-negative layer numbers, e.g. 4,8,12", param_hint="'--layers'")
    return layers
