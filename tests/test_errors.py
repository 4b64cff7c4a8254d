"""How a stage ends on Ctrl-C / SIGTERM (digitlab.errors.run_main), in real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import default_sigint

STOPPED = """
    import os, signal, sys, time
    from digitlab.errors import run_main

    def main():
        try:
            os.kill(os.getpid(), signal.{sig})
            time.sleep(2)  # a training loop
            print("trained on")
        finally:
            print("cleaned up")

    run_main(main)
"""


FAILED = """
    from digitlab.errors import DigitlabError, run_main

    def main():
        raise DigitlabError("params.yaml: gan.epochs = 0 is not allowed")

    run_main(main)
"""


def run_script(
    source: str, preexec_fn: object = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True, text=True, timeout=60, preexec_fn=preexec_fn,
        env={k: v for k, v in os.environ.items() if k != "DVC_STAGE"} | (env or {}),
    )  # fmt: skip


@pytest.mark.parametrize(("sig", "status"), [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_a_stop_unwinds_the_stage_and_exits_with_one_line(sig: str, status: int) -> None:
    done = run_script(STOPPED.format(sig=sig), default_sigint)
    assert done.returncode == status
    assert done.stderr.strip() == f"digitlab: error: stopped by {sig}"
    assert done.stdout.split() == ["cleaned", "up"]  # the finally ran; training did not go on


def test_a_stage_started_with_sigint_ignored_keeps_ignoring_it() -> None:
    """A background job (`cmd &` in a script) starts with SIGINT ignored: Ctrl-C in the
    terminal must not stop it, so run_main leaves it ignored."""
    done = run_script(
        STOPPED.format(sig="SIGINT"), lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.split() == ["trained", "on", "cleaned", "up"]


def test_an_error_is_one_line_and_under_dvc_names_the_restore_command() -> None:
    alone = run_script(FAILED)
    assert alone.returncode == 1
    assert alone.stderr == "digitlab: error: params.yaml: gan.epochs = 0 is not allowed\n"
    under_dvc = run_script(FAILED, env={"DVC_STAGE": "train_gan"})  # DVC sets it for a stage
    assert under_dvc.returncode == 1
    assert under_dvc.stderr == (
        "digitlab: error: params.yaml: gan.epochs = 0 is not allowed "
        "(`dvc checkout train_gan` restores its last good outputs)\n"
    )
