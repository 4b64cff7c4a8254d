"""How a stage ends (digitlab.stopping.run_main) on Ctrl-C / SIGTERM, on its own error and on a
failed write, in real subprocesses."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import default_sigint

STOPPED = """
    import os, signal, sys, time
    from digitlab.stopping import run_main

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
    from digitlab.errors import DigitlabError
    from digitlab.stopping import run_main

    def main():
        raise DigitlabError("params.yaml: gan.epochs = 0 is not allowed")

    run_main(main)
"""


def run_script(
    source: str,
    preexec_fn: object = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """The script in a new Python; under a DVC_STAGE it would remove that stage's outputs, so
    give it a `cwd` of its own (a folder with no dvc.yaml)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], cwd=cwd,
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


def test_an_error_is_one_line_and_under_dvc_names_the_restore_command(tmp_path: Path) -> None:
    alone = run_script(FAILED)
    assert alone.returncode == 1
    assert alone.stderr == "digitlab: error: params.yaml: gan.epochs = 0 is not allowed\n"
    # DVC sets DVC_STAGE for a stage
    under_dvc = run_script(FAILED, env={"DVC_STAGE": "train_gan"}, cwd=tmp_path)
    assert under_dvc.returncode == 1
    assert under_dvc.stderr == (
        "digitlab: error: params.yaml: gan.epochs = 0 is not allowed "
        "(`dvc checkout train_gan` restores its last good outputs)\n"
    )


WRITES = """
    import sys
    from digitlab.files import atomic_dir, write_bytes
    from digitlab.stopping import run_main

    def main():
        if sys.argv[1] == "file":
            write_bytes("out/model.pt", bytes(200_000))
        else:
            with atomic_dir("out/figures") as folder:
                (folder / "confusion.png").write_bytes(bytes(200_000))

    run_main(main)
"""


@pytest.mark.parametrize(("what", "named"), [("file", "out/model.pt"), ("folder", "out/figures")])
def test_a_write_past_the_file_size_limit_is_one_line_naming_the_output(
    tmp_path: Path, what: str, named: str
) -> None:
    """`ulimit -f` (Python turns the write into OSError EFBIG): the line names the output the
    user knows, not the temporary file, nor anything else; nothing half-written is left."""
    done = subprocess.run(
        ["bash", "-c", f'ulimit -f 100; exec "{sys.executable}" -c "$0" {what}', textwrap.dedent(WRITES)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"digitlab: error: {named}: cannot be written (file too large: the file-size limit of "
        "this process (ulimit -f) is reached)\n"
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_a_file_where_a_folder_should_be_is_named_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITES), "file"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "digitlab: error: out: a file is where a folder is needed\n"


LATE_FAILURE = """
    from pathlib import Path
    from digitlab.errors import DigitlabError
    from digitlab.stopping import run_main

    def main():
        Path("models").mkdir()
        Path("models/net.pt").write_text("written by this run")
        Path("reports/figures").mkdir(parents=True)
        Path("reports/figures/a.png").write_text("written by this run")
        raise DigitlabError("failed late")

    run_main(main)
"""


def test_a_stage_failing_under_dvc_removes_what_it_wrote_of_its_outputs(tmp_path: Path) -> None:
    """DVC removed the stage's outputs before running it: whatever of them is there once it
    fails is this run's, and would make `dvc checkout <stage>` refuse; other files stay."""
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs: [models/net.pt, reports/figures]\n"
        "    plots:\n      - reports/${name}.csv\n"
    )
    (tmp_path / "params.yaml").write_text("name: history\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/history.csv").write_text("unsaved too")
    (tmp_path / "reports/notes.txt").write_text("not an output")
    done = run_script(LATE_FAILURE, env={"DVC_STAGE": "s"}, cwd=tmp_path)
    assert done.stderr == (
        "digitlab: error: failed late (`dvc checkout s` restores its last good outputs)\n"
    )
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "dvc.yaml", "models", "params.yaml", "reports", "reports/notes.txt"
    ]  # fmt: skip
    alone = run_script(LATE_FAILURE, cwd=tmp_path / "reports")  # no DVC: nothing is removed
    assert alone.returncode == 1 and (tmp_path / "reports/models/net.pt").is_file()


def test_metrics_dvc_keeps_out_of_its_cache_are_put_back_else_the_hint_names_git(
    tmp_path: Path,
) -> None:
    """Metrics declared `cache: false` (committed to Git) are skipped by `dvc checkout`: a
    failed stage puts them back from the copy DVC's run-cache keeps, by dvc.lock's md5; with
    no copy, the hint says how Git brings them back."""
    good = b'{"accuracy": 0.99}\n'
    md5 = hashlib.md5(good).hexdigest()
    for folder in ("no-copy", "copy"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "dvc.yaml").write_text(
            "stages:\n  s:\n    cmd: x\n    outs: [models/net.pt]\n"
            "    metrics:\n      - reports/metrics.json:\n          cache: false\n"
        )
        (tmp_path / folder / "params.yaml").write_text("name: history\n")
        (tmp_path / folder / "dvc.lock").write_text(
            f"stages:\n  s:\n    outs:\n    - path: reports/metrics.json\n      md5: {md5}\n"
        )
    copy = tmp_path / "copy/.dvc/cache/files/md5" / md5[:2] / md5[2:]
    copy.parent.mkdir(parents=True)
    copy.write_bytes(good)

    done = run_script(LATE_FAILURE, env={"DVC_STAGE": "s"}, cwd=tmp_path / "no-copy")
    assert done.stderr == (
        "digitlab: error: failed late (`dvc checkout s` restores its last good outputs, "
        "`git checkout -- reports/metrics.json` its last committed metrics)\n"
    )
    assert not (tmp_path / "no-copy/reports/metrics.json").exists()
    done = run_script(LATE_FAILURE, env={"DVC_STAGE": "s"}, cwd=tmp_path / "copy")
    assert done.stderr == (
        "digitlab: error: failed late (`dvc checkout s` restores its last good outputs)\n"
    )
    assert (tmp_path / "copy/reports/metrics.json").read_bytes() == good
    assert not (tmp_path / "copy/models/net.pt").exists()
    assert sorted(p.name for p in (tmp_path / "copy/reports").iterdir()) == [
        "figures",
        "metrics.json",
    ]


NONDETERMINISTIC = """
    import torch
    from digitlab.stopping import run_main

    def main():
        torch.use_deterministic_algorithms(True)  # what device: cuda sets
        torch.zeros(4).put_(torch.tensor([0, 1]), torch.ones(2))  # no deterministic kernel

    run_main(main)
"""


def test_an_operation_with_no_deterministic_kernel_is_one_line_naming_the_key() -> None:
    done = run_script(NONDETERMINISTIC)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("digitlab: error: device: put_ has no deterministic kernel")
    assert done.stderr.endswith("; set device: cpu\n") and done.stderr.count("\n") == 1
