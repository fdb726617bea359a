"""`python -m train.torchrun [torchrun's options] -m train ...`: torchrun, whose last line is a rank's refusal.

torchrun ends a failed run with its own 40-line report (a traceback of the launcher and a table of the failure), below
the one line the rank printed. This runs torchrun's own launcher (torch.distributed.run) with the same options and, when
a rank fails, prints that rank's line last (the ranks hand it over in torchrun's per-rank error file, store.oneline) and
exits with the rank's exit code. A wrapper because torchrun offers no hook for how it reports a failure.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message if isinstance(failure.message, str) else str(failure.message.get("message", ""))
        if not message.startswith("error: "):  # not one of ours (a crash, a signal): torchrun's words, in one line
            message = f"error: rank {rank} failed (exit code {failure.exitcode}): {message.splitlines()[0] if message else ''}"
        print(message, file=sys.stderr)
        sys.exit(failure.exitcode if 0 < failure.exitcode < 256 else 1)


if __name__ == "__main__":
    main()
