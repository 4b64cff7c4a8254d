"""The one exception type whose message a user sees as a single line, and how stages end."""

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType


class DigitlabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that `with` blocks and `finally` clauses run:
    the MLflow run ends FAILED and half-written temporary files are removed."""


def _stop(signum: int, frame: FrameType | None) -> None:
    # Only the first signal interrupts: later ones must not cut short the cleanup it starts.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def restore_hint() -> str:
    """Under DVC (which removed the stage's outputs before running it), how to get the last
    good outputs back from DVC's cache; nothing when the stage runs on its own."""
    stage = os.environ.get("DVC_STAGE")
    return f" (`dvc checkout {stage}` restores its last good outputs)" if stage else ""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a DigitlabError becomes one line on stderr and exit status 1.

    Ctrl-C (SIGINT) and SIGTERM stop the stage the same way: the exception unwinds through the
    stage (its MLflow run ends FAILED, temporary outputs are deleted, finished outputs stay),
    then one line and exit status 130 or 143, so DVC records nothing.
    """
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored: started in background
        signal.signal(signal.SIGINT, _stop)
    try:
        main()
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}{restore_hint()}", file=sys.stderr)
        raise SystemExit(1) from None
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
        print(f"digitlab: error: stopped by {signum.name}{restore_hint()}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
