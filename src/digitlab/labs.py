"""The labs' own setups, one command each: every `labs/<lab>.yaml` is a small file of params
overrides, queued as named DVC experiments (`dvc exp run --queue -n <name> -S key=value`), run
two at a time, and answered in `reports/labs.md`, one table per lab.

    python -m digitlab.labs list              # the labs and their experiments
    python -m digitlab.labs run lab4 lab6     # queue, run (2 workers), wait, write the tables
    python -m digitlab.labs run --all
    python -m digitlab.labs report            # the tables again, from `dvc exp show`
"""

from __future__ import annotations

import argparse
import copy
import html
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitlab.errors import DigitlabError
from digitlab.params import ParamsError, parse_params

LABS_DIR = Path("labs")
REPORT = Path("reports/labs.md")
HTML_REPORT = Path("reports/labs.html")
NAME = re.compile(r"[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)*")
COMMAND_TIMEOUT = 600  # seconds for one dvc command (queueing, status, show)

# The figures a lab's table can show: column → (metrics file, key path, how to print it).
CLASSIFIER, GAN = "reports/classifier/metrics.json", "reports/gan/metrics.json"
COLUMNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "accuracy": (CLASSIFIER, ("accuracy",), "percent"),
    "detector_accuracy": (CLASSIFIER, ("detector", "accuracy"), "percent"),
    "precision": (CLASSIFIER, ("detector", "precision"), "percent"),
    "recall": (CLASSIFIER, ("detector", "recall"), "percent"),
    "decent_rate": (GAN, ("decent_rate",), "percent"),
    "decent_rate_worst": (GAN, ("decent_rate_worst",), "percent"),
    "frechet_ratio": (GAN, ("frechet_ratio",), "ratio"),
    "frechet_ratio_median": (GAN, ("frechet_ratio_median",), "ratio"),
    "classifier_score": (GAN, ("classifier_score",), "number"),
    "digits_present": (GAN, ("digits_present",), "number"),
}
Stage = Literal[
    "fetch", "prepare", "train_classifier", "evaluate", "train_gan", "evaluate_gan", "report"
]
Column = Literal[
    "accuracy", "detector_accuracy", "precision", "recall", "decent_rate", "decent_rate_worst",
    "frechet_ratio", "frechet_ratio_median", "classifier_score", "digits_present",
]  # fmt: skip


class LabError(DigitlabError):
    """A lab file that cannot be read or holds a key or value that is not allowed."""


class LabFile(BaseModel):
    """labs/<lab>.yaml: what the lab asks, and the params of each of its experiments."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str
    question: str  # the lab's own question or target, answered by the table
    stages: list[Stage] = []  # `dvc exp run` targets (and what they need); [] = every stage
    columns: list[Column] = Field(min_length=1)
    set: dict[str, Any] = {}  # params every experiment of the lab takes
    # every combination of the axes is one experiment: an axis is a list of values of one key,
    # or a mapping of labels to params; the values / labels name the experiment
    grid: dict[str, list[Any] | dict[str, dict[str, Any]]] = {}
    experiments: dict[str, dict[str, Any]] = {}  # more experiments: name suffix → params


@dataclass(frozen=True)
class Setup:
    """One experiment of a lab: its name and the params it overrides (dotted keys)."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Lab:
    name: str
    path: Path
    spec: LabFile
    setups: list[Setup] = field(default_factory=list)


def _label(value: Any) -> str:
    return str(value).lower().replace(".", "_").replace(" ", "")


def expand(lab: str, spec: LabFile) -> list[Setup]:
    """The lab's experiments: each grid combination, then each named experiment."""
    axes = []
    for key, axis in spec.grid.items():
        if isinstance(axis, list):
            axes.append([(_label(v), {key: v}) for v in axis])
        else:
            axes.append(list(axis.items()))
    setups = []
    if axes:
        for combo in itertools.product(*axes):
            overrides = dict(spec.set)
            for _, chosen in combo:
                overrides.update(chosen)
            setups.append(Setup("-".join([lab, *(label for label, _ in combo)]), overrides))
    for suffix, chosen in spec.experiments.items():
        setups.append(Setup(f"{lab}-{suffix}", {**spec.set, **chosen}))
    return setups


def apply(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of a params.yaml mapping with dotted keys set; a key below a value that is not a
    section fails with one line (unknown keys are left for the params validation to name)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LabError(f"{source}: {key}: {'.'.join(parents[: i + 1])} is not a section")
        node[last] = value
    return out


def load_lab(path: Path, params_raw: dict[str, Any]) -> Lab:
    """Read and validate one lab file: its own keys, and every experiment's params through the
    same validation as params.yaml; the first problem is one line naming the file and key."""
    name = path.stem
    if not NAME.fullmatch(name):
        raise LabError(f"{path}: a lab's file name must be lowercase letters, digits, - or _")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LabError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise LabError(
            f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}"
        ) from None
    if not isinstance(raw, dict):
        raise LabError(f"{path}: expected a mapping of keys (title, question, columns, …)")
    try:
        spec = LabFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()  # a misspelt key first: its "missing" twin follows from it
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(LabFile.model_fields)
        hint = f" (allowed: {allowed})" if err["type"] == "extra_forbidden" else ""
        message = err["msg"].removeprefix("Value error, ")
        raise LabError(f"{path}: {key}: {message}{hint}") from None
    setups = expand(name, spec)
    if not setups:
        raise LabError(f"{path}: no experiments: give a grid or experiments")
    seen: set[str] = set()
    for setup in setups:
        if not NAME.fullmatch(setup.name):
            raise LabError(
                f"{path}: experiment name {setup.name!r}: use lowercase letters, digits, - or _"
            )
        if setup.name in seen:
            raise LabError(f"{path}: experiment {setup.name!r} is defined twice")
        seen.add(setup.name)
        source = f"{path} ({setup.name})"
        try:
            parse_params(apply(params_raw, setup.overrides, source), source)
        except ParamsError as exc:
            raise LabError(str(exc)) from None
    return Lab(name, path, spec, setups)


def load_labs(names: list[str] | None = None, root: Path = Path()) -> list[Lab]:
    """The named labs (all of them without names) of the repo at `root`, every file validated
    before any work; labs that run every stage first (the GANs: the longest)."""
    params_raw = yaml.safe_load((root / "params.yaml").read_text())
    labs_dir = root / LABS_DIR
    available = sorted(p.stem for p in labs_dir.glob("*.yaml"))
    unknown = [n for n in names or [] if n not in available]
    if unknown:
        raise LabError(f"no lab named {', '.join(unknown)} (labs: {', '.join(available)})")
    labs = [load_lab(labs_dir / f"{n}.yaml", params_raw) for n in names or available]
    labs.sort(key=lambda lab: bool(lab.spec.stages))
    names_seen: dict[str, str] = {}
    for lab in labs:
        for setup in lab.setups:
            if setup.name in names_seen:
                raise LabError(
                    f"{lab.path}: experiment {setup.name!r} is also in {names_seen[setup.name]}"
                )
            names_seen[setup.name] = str(lab.path)
    return labs


# ---------------------------------------------------------------- running


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
        subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], stdout=out, env=env,
                       stderr=subprocess.STDOUT, timeout=COMMAND_TIMEOUT, check=True)  # fmt: skip
    start, ended = time.monotonic(), {}
    while len(ended) < len(names):
        time.sleep(poll)
        status = queue_status()
        for name in names:
            state = status.get(name)
            if name not in ended and state in ("Success", "Failed"):
                ended[name] = state
                print(f"labs: {name}: {state.lower()} ({time.monotonic() - start:.0f} s, "
                      f"{len(ended)}/{len(names)})", flush=True)  # fmt: skip
        if not any(status.get(n) in ("Queued", "Running") for n in names if n not in ended):
            for name in names:  # neither queued nor running nor ended: lost from the queue
                ended.setdefault(name, status.get(name, "Failed"))
    return ended


# ---------------------------------------------------------------- the answer


def experiment_data(names: set[str]) -> dict[str, dict[str, Any]]:
    """The newest `dvc exp show` data of each named experiment (every commit's experiments),
    with its baseline commit under "baseline"."""
    shown = json.loads(dvc("exp", "show", "--json", "-A", "--no-pager").stdout or "[]")
    found: dict[str, dict[str, Any]] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            revs = exp.get("revs") or []
            if name not in names or not revs or not revs[0].get("data"):
                continue
            data = {**revs[0]["data"], "baseline": baseline.get("rev", "")}
            if name not in found or (data.get("timestamp") or "") > (
                found[name].get("timestamp") or ""
            ):
                found[name] = data
    return found


def metric(data: dict[str, Any], column: str) -> Any:
    path, keys, _ = COLUMNS[column]
    value: Any = ((data.get("metrics") or {}).get(path) or {}).get("data") or {}
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def formatted(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "percent":
        return f"{value:.2%}"
    if kind == "ratio":
        return f"{value:.3g}×"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pipeline_runs(names: list[str]) -> dict[str, str]:
    """{experiment name: the URL of its MLflow pipeline run} from the project's store."""
    import mlflow

    from digitlab.report import run_url
    from digitlab.tracking import EXPERIMENT, KIND_TAG, PIPELINE_TAG, tracking_uri

    uri = tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    out = {}
    for name in names:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = 'exp:{name}' and tags.`{KIND_TAG}` = 'pipeline'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            out[name] = run_url(uri, experiment.experiment_id, runs[0].info.run_id)
    return out


def overrides_text(setup: Setup, lab: Lab) -> str:
    """The params that make this experiment differ from its lab's common ones."""
    own = {k: v for k, v in setup.overrides.items() if lab.spec.set.get(k, object()) != v}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in own.items()) or "the lab's common params"


@dataclass
class Table:
    """One lab's answer: its question, the best experiment, a row per experiment."""

    lab: Lab
    header: list[str]
    rows: list[list[str]]  # experiment, figures…, run URL, commit, params
    best: str


def dataset(setup: Setup, params_raw: dict[str, Any]) -> str:
    return setup.overrides.get("data.dataset", params_raw["data"]["dataset"])


def lab_table(lab: Lab, data: dict[str, dict[str, Any]], runs: dict[str, str]) -> Table:
    """The lab's experiments, best first by its first column (the lab's own question), for
    each dataset the lab uses."""
    columns = lab.spec.columns
    first = columns[0]
    params_raw = yaml.safe_load(Path("params.yaml").read_text())
    datasets = list(dict.fromkeys(dataset(s, params_raw) for s in lab.setups))
    order = sorted(lab.setups, key=lambda s: (datasets.index(dataset(s, params_raw)),
                                              -(metric(data.get(s.name, {}), first) or -1.0)))  # fmt: skip
    bests = []
    for name in datasets:
        top = next(s for s in order if dataset(s, params_raw) == name)
        value = metric(data.get(top.name, {}), first)
        if value is not None:
            on = f" on {name}" if len(datasets) > 1 else ""
            bests.append(f"{top.name}{on} ({first} {formatted(value, COLUMNS[first][2])})")
    rows = []
    for setup in order:
        exp = data.get(setup.name)
        if exp is None:
            figures, url, commit = ["not run"] * len(columns), "", ""
        else:
            figures = [formatted(metric(exp, c), COLUMNS[c][2]) for c in columns]
            url, commit = runs.get(setup.name, ""), exp["baseline"][:7]
        rows.append([setup.name, *figures, url, commit, overrides_text(setup, lab)])
    best = "; ".join(bests) or "none run yet"
    return Table(lab, ["experiment", *columns, "MLflow", "commit", "params"], rows, best)


def markdown(tables: list[Table]) -> str:
    lines = ["# The labs, one command each", "", INTRO, ""]
    for t in tables:
        spec = t.lab.spec
        lines += [f"## {spec.title}", "", spec.question.strip(), "", f"Best: {t.best}.", ""]
        if spec.set:
            common = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in spec.set.items())
            lines += [f"Every experiment of `labs/{t.lab.name}.yaml`: {common}.", ""]
        lines += ["| " + " | ".join(t.header) + " |", "|" + " --- |" * len(t.header)]
        for name, *figures, url, commit, params in t.rows:
            run = f"[run]({url})" if url else "–"
            commit = f"`{commit}`" if commit else "–"
            lines.append(f"| `{name}` | {' | '.join(figures)} | {run} | {commit} | {params} |")
        lines.append("")
    return "\n".join(lines)


def html_page(tables: list[Table]) -> str:
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>digitlab: the labs</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}</style>",
             f"<h1>The labs, one command each</h1><p>{esc(INTRO)}</p>"]  # fmt: skip
    for t in tables:
        spec = t.lab.spec
        parts.append(f"<h2>{esc(spec.title)}</h2><p>{esc(spec.question.strip())}</p>"
                     f"<p>Best: {esc(t.best)}</p><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in t.header) + "</tr>")  # fmt: skip
        for name, *figures, url, commit, params in t.rows:
            run = f"<a href='{esc(url)}'>run</a>" if url else "–"
            cells = [
                f"<code>{esc(name)}</code>",
                *map(esc, figures),
                run,
                esc(commit or "–"),
                esc(params),
            ]
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


INTRO = (
    "Written by `make labs` / `make lab LAB=…` (again: `python -m digitlab.labs report`) from "
    "`dvc exp show`. Each row's commit is the experiment's baseline; its run, the experiment's "
    "MLflow pipeline run (a local store: `make ui` serves http://127.0.0.1:5000)."
)


def write_report(labs: list[Lab]) -> str:
    """reports/labs.md and reports/labs.html: one table per lab, from `dvc exp show`."""
    from digitlab.files import write_text

    names = [s.name for lab in labs for s in lab.setups]
    data = experiment_data(set(names))
    runs = pipeline_runs([n for n in names if n in data])
    tables = [lab_table(lab, data, runs) for lab in labs]
    text = markdown(tables)
    write_text(REPORT, text)
    write_text(HTML_REPORT, html_page(tables))
    return text


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m digitlab.labs", description=__doc__.split("\n\n")[0]
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
