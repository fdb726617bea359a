"""Progress bars (tqdm, on stderr) for every step that can take more than a second: the corpus's header scan, source
hashing, statistics fitting, HDF5 export and import. `verify` and `convert` use click's bar; extraction has its own.

A bar shows only on a terminal and only once its step has run for a second, and is wiped when done: logs, pipes and
the one-line refusals stay as they were. DISTILCACHE_PROGRESS=1 shows them anyway, at once (tests, CI logs).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys

DELAY = 1.0  # seconds before a bar appears: quick steps stay silent
_SILENCED = contextvars.ContextVar("distilcache_progress_silenced", default=False)


@contextlib.contextmanager
def silenced(quiet: bool = True):
    """No bar inside the block (a command's --quiet); the steps below need not be told."""
    token = _SILENCED.set(quiet or _SILENCED.get())
    try:
        yield
    finally:
        _SILENCED.reset(token)


def forced() -> bool:
    return os.environ.get("DISTILCACHE_PROGRESS") == "1"


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    """A tqdm bar over `total` steps (None: a counter)."""
    from tqdm import tqdm

    disable = True if not enabled or _SILENCED.get() else (False if forced() else None)  # None: off when stderr is no terminal
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, delay=0 if forced() else DELAY, leave=False,
                dynamic_ncols=True, mininterval=0.5)


def tracked(items, total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    """`items`, with a bar that advances as they are consumed."""
    with bar(total, desc, unit, enabled) as b:
        for item in items:
            yield item
            b.update(1)
