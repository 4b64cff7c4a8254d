"""Running the labs: each experiment queued under its name (`dvc exp run --queue -n <name> -S
key=value`), the queue's workers started, and their end awaited."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError
from digitlab.labs import Lab

COMMAND_TIMEOUT = 600  # seconds for one dvc command (queueing, status, show)


def dvc(
    *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run dvc; with check, a failure is one error naming the command and its last line."""
    result = subprocess.run(["dvc", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise DigitlabError(f"dvc {' '.join(args[:3])} … failed: {lines[-1]}")
    return result


def set_options(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` for each override, values written as YAML flow (JSON is YAML)."""
    return [opt for key, value in overrides.items() for opt in ("-S", f"{key}={json.dumps(value)}")]


def queue(labs: list[Lab]) -> list[str]:
    """Queue every experiment of the labs under its name (replacing earlier ones of that name),
    taking one of each lab in turn: experiments of one lab often share a stage (lab 4's
    detector), which the second one then takes from DVC's run-cache instead of training it
    at the same time."""
    setups = [(lab, setup) for lab in labs for setup in lab.setups]
    names = [setup.name for _, setup in setups]
    dvc("exp", "remove", *names, check=False)  # names not there only warn
    dvc("queue", "remove", *names, check=False)  # and their earlier tasks, ended or not
    turns = itertools.zip_longest(*([(lab, s) for s in lab.setups] for lab in labs))
    for lab, setup in (pair for turn in turns for pair in turn if pair):
        dvc(
            "exp",
            "run",
            "--queue",
            "-n",
            setup.name,
            *set_options(setup.overrides),
            *lab.spec.stages,
        )
    return names


def queue_status() -> dict[str, str]:
    """`dvc queue status` as {experiment name: Queued | Running | Success | Failed}."""
    rows = [line.split() for line in dvc("queue", "status").stdout.splitlines()[1:]]
    status: dict[str, str] = {}
    for row in rows:
        task = len(row) >= 3 and re.fullmatch(r"[0-9a-f]{7}", row[0])
        if task and status.get(row[1]) not in ("Queued", "Running"):  # a live task wins
            status[row[1]] = row[-1]
    return status


def run_queue(names: list[str], jobs: int, log: Path, poll: float = 10) -> dict[str, str]:
    """Start `jobs` queue workers and wait until every named experiment ended; prints each as
    it ends. Returns {name: Success | Failed}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # each worker's torch gets its share of the cores: two workers with a thread per core
    # each would make OpenMP's threads wait on each other
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with log.open("a") as out:  # the workers inherit these: a pipe would wait for them
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)],
            stdout=out,
            env=env,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT,
            check=True,
        )
    start, ended = time.monotonic(), {}
    while len(ended) < len(names):
        time.sleep(poll)
        status = queue_status()
        for name in names:
            state = status.get(name)
            if name not in ended and state in ("Success", "Failed"):
                ended[name] = state
                print(
                    f"labs: {name}: {state.lower()} ({time.monotonic() - start:.0f} s, "
                    f"{len(ended)}/{len(names)})",
                    flush=True,
                )
        if not any(status.get(n) in ("Queued", "Running") for n in names if n not in ended):
            for name in names:  # neither queued nor running nor ended: lost from the queue
                ended.setdefault(name, status.get(name, "Failed"))
    return ended
