"""``python -m bridge`` and the ``leadbridge`` console script.

A stop signal that arrives while the CLI is still importing (half a second, more on a
busy machine) exits 0 at once instead of killing the process with -15: nothing has
started yet, so there is nothing to clean up. The long-running commands (run, serve,
worker) keep that handler until they install their own, before they start anything, so
no moment of their start-up dies by the signal; the others get the usual behaviour back
when click dispatches to them (``restore_default_signals``).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _exit_now(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def restore_default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_now)
    from bridge.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
