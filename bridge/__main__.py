"""``python -m bridge`` and the ``leadbridge`` console script.

A stop signal that arrives while the CLI is still importing (half a second, more on a
busy machine) exits 0 at once instead of killing the process with -15: nothing has
started yet, so there is nothing to clean up. Each command installs its own handlers
before it starts anything (the supervisor, the worker); the others get the usual
behaviour back once the import is done.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _exit_now(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_now)
    from bridge.cli import main as cli

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli()


if __name__ == "__main__":
    main()
