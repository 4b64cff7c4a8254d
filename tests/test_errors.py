"""How a stage stops on Ctrl-C / SIGTERM (digitlab.errors.run_main), in real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

SWALLOWED = """
    import os, signal, time
    from digitlab.errors import raise_if_stopped, run_main

    def main():
        try:
            os.kill(os.getpid(), signal.{sig})
            time.sleep(5)
        except BaseException:
            pass  # a library's broad except catches the first raise
        for step in range(500):  # a training loop
            raise_if_stopped()
            time.sleep(0.01)
        print("trained on")

    run_main(main)
"""

STUCK_CLEANUP = """
    import os, signal, time
    from digitlab import errors

    errors.CLEANUP_SECONDS = 1.0

    def main():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            time.sleep(60)  # a clean-up that never ends

    errors.run_main(main)
"""


def default_sigint() -> None:
    """As a terminal starts a command: SIGINT not ignored, even when the tests run as a
    background job (which starts with SIGINT ignored, and run_main keeps it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_script(source: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=default_sigint,
    )
    return done, time.monotonic() - start


@pytest.mark.parametrize(("sig", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_swallowed_stop_is_raised_again_at_the_next_step(sig: str, status: int) -> None:
    done, _ = run_script(SWALLOWED.format(sig=sig))
    assert done.returncode == status
    assert done.stderr.strip() == f"digitlab: error: stopped by {sig}"
    assert "trained on" not in done.stdout


def test_a_clean_up_that_hangs_is_cut_short() -> None:
    done, seconds = run_script(STUCK_CLEANUP)
    assert done.returncode == 143 and seconds < 30
    assert "stopped by SIGTERM; the clean-up took over 1 s and was cut short" in done.stderr
