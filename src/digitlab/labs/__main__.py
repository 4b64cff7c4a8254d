"""`python -m digitlab.labs list | run | report`: the labs, one command each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from digitlab.errors import DigitlabError
from digitlab.labs import LabError, load_labs
from digitlab.labs.queue import dvc, queue, run_queue
from digitlab.labs.tables import REPORT, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m digitlab.labs", description="The labs, one command each."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the labs and their experiments")
    run = sub.add_parser("run", help="queue and run labs, then write reports/labs.md")
    run.add_argument("labs", nargs="*", help="lab names (labs/<name>.yaml)")
    run.add_argument("--all", action="store_true", help="every lab")
    run.add_argument("-j", "--jobs", type=int, default=2, help="queue workers (default 2)")
    sub.add_parser("report", help="write reports/labs.md from every lab's experiments")
    args = parser.parse_args(argv)
    try:
        if args.command == "run" and not (args.labs or args.all):
            raise LabError("name the labs to run (make lab LAB=lab4), or --all (make labs)")
        # every lab file is validated, whichever run; a run queues only the ones named
        labs = load_labs()
        if args.command == "run" and not args.all:
            labs = load_labs(args.labs)
        if args.command == "list":
            for lab in labs:
                print(f"{lab.name}: {lab.spec.title} ({len(lab.setups)} experiments)")
                for setup in lab.setups:
                    print(f"  {setup.name}")
            return 0
        ok = True
        if args.command == "run":
            names = queue(labs)
            print(f"labs: queued {len(names)} experiments; {args.jobs} workers", flush=True)
            ended = run_queue(names, args.jobs, Path(".dvc/tmp/labs-queue.log"))
            failed = [n for n, state in ended.items() if state != "Success"]
            for name in failed:
                tail = dvc("queue", "logs", name, check=False).stdout.strip().splitlines()[-5:]
                print(f"labs: {name} failed:\n  " + "\n  ".join(tail), file=sys.stderr)
            ok = not failed
        print(write_report(load_labs()))  # every lab's latest figures, not only the ones run
        print(f"labs: wrote {REPORT}")
        return 0 if ok else 1
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
