"""How a stage ends: its error as one line, stop signals (Ctrl-C, SIGTERM, SIGHUP) unwound like
exceptions, a watch on the dvc process that started it, and what a failed stage leaves."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn

import yaml

from digitlab.errors import DigitlabError, os_error_line


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so that `with` blocks and `finally`
    clauses run: the MLflow run ends FAILED and half-written temporary files are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: its terminal was closed
ORPHANED = threading.Event()  # set when the dvc process that started this stage is gone


def ignore_stops() -> None:
    """From here on stop signals are ignored: the stage's work is complete and only closing it
    remains (the first stop signal of a failing stage does the same)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOPS:
            signal.signal(sig, signal.SIG_IGN)


def _stop(signum: int, frame: FrameType | None) -> None:
    ignore_stops()  # later signals must not cut short the cleanup this one starts
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def dvc_process() -> int | None:
    """The pid of the dvc process running this stage (DVC sets DVC_STAGE; a shell may stand
    between them), or None when the stage runs on its own or /proc cannot tell."""
    if not os.environ.get("DVC_STAGE"):
        return None
    try:
        pid = os.getppid()
        for _ in range(4):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
            if any(arg == b"dvc" or arg.endswith(b"/dvc") for arg in argv):
                return pid
            pid = _parent(pid)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _watch(dvc: int) -> None:
    """Stop this stage, as SIGTERM does, once the dvc process that started it is gone (killed,
    or its terminal closed): a stage must not train on, orphaned, and rewrite outputs later."""
    while _running(dvc):
        time.sleep(0.5)
    ORPHANED.set()
    os.kill(os.getpid(), signal.SIGTERM)


def restore_hint(in_git: list[str] | None = None) -> str:
    """Under DVC (which removed the stage's outputs before running it), how to get the last
    good outputs back: `dvc checkout`, and `git checkout` for the `cache: false` ones in
    `in_git` (the headline metrics, which `dvc checkout` skips and which could not be put
    back: see put_back_uncached_outputs); nothing when the stage runs alone."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return ""
    if not in_git:
        return f" (`dvc checkout {stage}` restores its last good outputs)"
    return (
        f" (`dvc checkout {stage}` restores its last good outputs, "
        f"`git checkout -- {' '.join(in_git)}` its last committed metrics)"
    )


def put_back_uncached_outputs(root: Path = Path()) -> list[str]:
    """Under DVC, put the stage's `cache: false` outputs back as dvc.lock records them: DVC
    removed them before the stage ran, `dvc checkout` skips them, and DVC's run-cache keeps a
    copy in the cache by their md5. The ones it could not put back (no copy), for the hint."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return []
    wanted = uncached_outputs(stage, root)
    recorded: dict[str, str] = {}
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        recorded = {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"] if "md5" in o}
    missing = []
    for path in wanted:
        md5 = recorded.get(path, "")
        copy = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if (root / path).exists():
            continue
        if len(md5) != 32 or not copy.is_file():
            missing.append(path)
            continue
        part = (root / path).with_name(f".{Path(path).name}.part")
        try:
            shutil.copyfile(copy, part)
            part.replace(root / path)
        except OSError:
            part.unlink(missing_ok=True)
            missing.append(path)
    return missing


def uncached_outputs(stage: str, root: Path = Path()) -> list[str]:
    """The outputs dvc.yaml declares for `stage` with `cache: false` (Git holds them)."""
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
        return [
            path
            for kind in ("outs", "metrics", "plots")
            for out in spec.get(kind, [])
            if isinstance(out, dict)
            for path, options in out.items()
            if isinstance(options, dict) and options.get("cache") is False
        ]
    return []


def stage_outputs(stage: str, root: Path = Path()) -> list[Path]:
    """The paths dvc.yaml declares as the stage's outputs (outs, metrics, plots), with
    `${key}` filled in from params.yaml."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    params = yaml.safe_load((root / "params.yaml").read_text())
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for out in spec.get(kind, []):
            path = next(iter(out)) if isinstance(out, dict) else out
            while "${" in path:
                start = path.index("${")
                end = path.index("}", start)
                value: object = params
                for part in path[start + 2 : end].split("."):
                    value = value[part]  # type: ignore[index]
                path = f"{path[:start]}{value}{path[end + 1 :]}"
            paths.append(root / path)
    return paths


def remove_unsaved_outputs() -> None:
    """Under DVC, remove what the failing stage wrote of its outputs: DVC removed them all
    before the stage ran, so what is there now is this run's, unsaved, and would make
    `dvc checkout <stage>` refuse to put the last good ones back."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return
    try:
        outputs = stage_outputs(stage)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return
    for path in outputs:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def _restore_orphaned() -> str:
    """With dvc gone (its lock with it), put the stage's last good outputs back ourselves."""
    stage = os.environ["DVC_STAGE"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "checkout", stage], capture_output=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return restore_hint(put_back_uncached_outputs())
    in_git = put_back_uncached_outputs()
    if done.returncode == 0 and not in_git:
        return "; its last good outputs are restored"
    return restore_hint(in_git)


def nondeterministic_operation(exc: RuntimeError) -> str | None:
    """The operation torch refused to run under deterministic algorithms (device: cuda sets
    them), or None for any other RuntimeError."""
    match = re.search(r"(\S+) does not have a deterministic implementation", str(exc))
    return match.group(1) if match else None


def fail(line: str, status: int = 1) -> NoReturn:
    """End the stage with one line on stderr and `status`: under DVC, first remove what it
    wrote of its outputs and put back the uncached ones, then say how to get the rest back."""
    remove_unsaved_outputs()
    _end(f"{line}{restore_hint(put_back_uncached_outputs())}", status)


def _end(line: str, status: int) -> NoReturn:
    print(f"digitlab: error: {line}", file=sys.stderr)
    raise SystemExit(status)


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a DigitlabError, an OSError (the file and the reason) or an
    operation with no deterministic kernel on a CUDA device becomes one line on stderr and exit
    status 1, and under DVC the outputs it wrote are removed.

    Ctrl-C (SIGINT), SIGTERM and SIGHUP (its terminal closed) stop the stage the same way: the
    exception unwinds through the stage (its MLflow run ends FAILED, temporary outputs are
    deleted), then one line and exit status 130, 143 or 129, so DVC records nothing. So does
    the end of the dvc process that started the stage, which then also gets its last good
    outputs back.
    """
    for sig in STOPS:  # an ignored one stays ignored (SIGINT in a background job, nohup)
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _stop)
    dvc = dvc_process()
    if dvc is not None:
        threading.Thread(target=_watch, args=(dvc,), daemon=True).start()
    try:
        main()
    except DigitlabError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(os_error_line(exc))
    except RuntimeError as exc:
        operation = nondeterministic_operation(exc)
        if operation is None:
            raise
        why = f"{operation} has no deterministic kernel on this device, so two runs would differ"
        fail(f"device: {why}; set device: cpu")
    except (KeyboardInterrupt, Terminated) as exc:
        signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.Signals(exc.signum)
        if ORPHANED.is_set():
            remove_unsaved_outputs()  # then the last good ones come back
            _end(f"stopped: dvc (pid {dvc}) is gone{_restore_orphaned()}", 128 + signum)
        fail(f"stopped by {signum.name}", 128 + signum)
    ignore_stops()  # done: a late stop signal must not turn a finished stage into a failure
