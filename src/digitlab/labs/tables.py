"""Each lab's answer: a table of its experiments' headline figures (from `dvc exp show`), the
best one, links to their MLflow pipeline runs: reports/labs.md and reports/labs.html (which
also shows each experiment's confusion heatmap and GAN sample grid)."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from digitlab.flat import flatten
from digitlab.labs import Lab, Setup
from digitlab.labs.queue import dvc

REPORT = Path("reports/labs.md")
HTML_REPORT = Path("reports/labs.html")
METRICS_FILES = {"classifier": "reports/classifier/metrics.json", "gan": "reports/gan/metrics.json"}
# What labs.html shows of an experiment whose lab reports classifier/ or gan/ figures: the stage
# that drew it, its MLflow artifact, and the DVC output it is (where that stage was restored
# from the run-cache in this experiment, so it has no run of its own).
FIGURES = {
    "classifier": ("confusion heatmap", "evaluate", "classifier/figures/confusion.png",
                   "reports/classifier/figures/confusion.png"),
    "gan": ("sample grid", "evaluate_gan", "gan_eval/samples.png", "reports/gan/samples.png"),
}  # fmt: skip
THUMBNAIL = 220  # pixels: the longer side of an embedded figure


def experiment_data(names: set[str]) -> dict[str, dict[str, Any]]:
    """The newest `dvc exp show` data of each named experiment (every commit's experiments),
    with its baseline commit under "baseline"."""
    listed = json.loads(dvc("exp", "show", "--json", "-A", "--no-pager").stdout or "[]")
    found: dict[str, dict[str, Any]] = {}
    for baseline in listed:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            revs = exp.get("revs") or []
            if name not in names or not revs or not revs[0].get("data"):
                continue
            data = {**revs[0]["data"], "baseline": baseline.get("rev", ""), "rev": revs[0]["rev"]}
            if name not in found or (data.get("timestamp") or "") > (
                found[name].get("timestamp") or ""
            ):
                found[name] = data
    return found


def metric(data: dict[str, Any], column: str) -> Any:
    """A column's value (classifier/accuracy: 'accuracy' of the classifier's metrics file) in
    an experiment's `dvc exp show` data; None when it has none."""
    kind, name = column.split("/", 1)
    files = data.get("metrics") or {}
    values = (files.get(METRICS_FILES[kind]) or {}).get("data") or {}
    return flatten(values).get(name)


def formatted(value: Any, column: str) -> str:
    """Rates and accuracies as percentages, Fréchet ratios as factors, the rest as numbers."""
    leaf = column.rsplit("/", 1)[-1]
    if value is None:
        return "–"
    if leaf in ("accuracy", "precision", "recall", "f1") or leaf.startswith("decent_rate"):
        return f"{value:.2%}"
    if leaf.startswith("frechet_ratio"):
        return f"{value:.3g}×"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def heading(column: str) -> str:
    """A column as its table heads it: without the file (classifier/, gan/)."""
    return column.split("/", 1)[1]


def _store() -> tuple[Any, str, str | None]:
    """(client, tracking URI, experiment id or None) of the project's MLflow store."""
    import mlflow

    from digitlab.store import EXPERIMENT, tracking_uri

    uri = tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, uri, experiment.experiment_id if experiment else None


def _latest_run(client: Any, experiment_id: str, name: str, query: str) -> Any:
    from digitlab.store import PIPELINE_TAG

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = 'exp:{name}' and {query}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def pipeline_runs(names: list[str]) -> dict[str, str]:
    """{experiment name: the URL of its MLflow pipeline run} from the project's store."""
    from digitlab.report import run_url
    from digitlab.store import KIND_TAG

    client, uri, experiment_id = _store()
    if experiment_id is None:
        return {}
    out = {}
    for name in names:
        run = _latest_run(client, experiment_id, name, f"tags.`{KIND_TAG}` = 'pipeline'")
        if run is not None:
            out[name] = run_url(uri, experiment_id, run.info.run_id)
    return out


def figure_png(kind: str, name: str, rev: str) -> bytes | None:
    """An experiment's figure (FIGURES[kind]): the artifact of its stage's MLflow run, else the
    DVC output its commit `rev` holds; None where it has neither."""
    import dvc.api
    from mlflow.exceptions import MlflowException

    _, stage, artifact, output = FIGURES[kind]
    client, _, experiment_id = _store()
    query = f"tags.`dvc.stage` = '{stage}' and attributes.status = 'FINISHED'"
    run = _latest_run(client, experiment_id, name, query) if experiment_id else None
    if run is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(client.download_artifacts(run.info.run_id, artifact, tmp)).read_bytes()
            except (MlflowException, OSError):
                pass
    try:
        return dvc.api.read(output, rev=rev, mode="rb")
    except Exception:  # not among the experiment's outputs (its lab stopped before that stage)
        return None


def thumbnail(png: bytes) -> str:
    """A PNG shrunk to THUMBNAIL pixels on its longer side, as a data: URI."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def experiment_figures(
    lab: Lab, data: dict[str, dict[str, Any]]
) -> dict[str, list[tuple[str, str]]]:
    """{experiment: [(what it shows, data: URI)]}: the confusion heatmap where the lab reports
    classifier figures, the sample grid where it reports the GAN's."""
    kinds = [k for k in FIGURES if any(c.startswith(f"{k}/") for c in lab.spec.columns)]
    out: dict[str, list[tuple[str, str]]] = {}
    for setup in lab.setups:
        exp = data.get(setup.name)
        if exp is None:
            continue
        pngs = [(FIGURES[k][0], figure_png(k, setup.name, exp["rev"])) for k in kinds]
        out[setup.name] = [(what, thumbnail(png)) for what, png in pngs if png is not None]
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
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # html_page's


def dataset(setup: Setup, params_raw: dict[str, Any]) -> str:
    return setup.overrides.get("data.dataset", params_raw["data"]["dataset"])


def lab_table(lab: Lab, data: dict[str, dict[str, Any]], runs: dict[str, str]) -> Table:
    """The lab's experiments, best first by its first column (the lab's own question), for
    each dataset the lab uses."""
    columns = lab.spec.columns
    first = columns[0]
    params_raw = yaml.safe_load(Path("params.yaml").read_text())
    datasets = list(dict.fromkeys(dataset(s, params_raw) for s in lab.setups))
    order = sorted(
        lab.setups,
        key=lambda s: (
            datasets.index(dataset(s, params_raw)),
            -(metric(data.get(s.name, {}), first) or -1.0),
        ),
    )
    bests = []
    for name in datasets:
        top = next(s for s in order if dataset(s, params_raw) == name)
        value = metric(data.get(top.name, {}), first)
        if value is not None:
            on = f" on {name}" if len(datasets) > 1 else ""
            bests.append(f"{top.name}{on} ({heading(first)} {formatted(value, first)})")
    rows = []
    for setup in order:
        exp = data.get(setup.name)
        if exp is None:
            figures, url, commit = ["not run"] * len(columns), "", ""
        else:
            figures = [formatted(metric(exp, c), c) for c in columns]
            url, commit = runs.get(setup.name, ""), exp["baseline"][:7]
        rows.append([setup.name, *figures, url, commit, overrides_text(setup, lab)])
    best = "; ".join(bests) or "none run yet"
    return Table(
        lab, ["experiment", *map(heading, columns), "MLflow", "commit", "params"], rows, best
    )


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


def image_tag(name: str, what: str, uri: str) -> str:
    label = html.escape(f"{name}: {what}")
    return f"<img src='{uri}' alt='{label}' title='{label}'>"


def html_page(tables: list[Table]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>digitlab: the labs</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}img{margin:2px;vertical-align:middle}</style>",
        f"<h1>The labs, one command each</h1><p>{esc(INTRO)}</p>",
    ]
    for t in tables:
        spec = t.lab.spec
        parts.append(
            f"<h2>{esc(spec.title)}</h2><p>{esc(spec.question.strip())}</p>"
            f"<p>Best: {esc(t.best)}</p><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in [*t.header, *["figures"][: bool(t.images)]])
            + "</tr>"
        )
        for name, *figures, url, commit, params in t.rows:
            run = f"<a href='{esc(url)}'>run</a>" if url else "–"
            cells = [
                f"<code>{esc(name)}</code>",
                *map(esc, figures),
                run,
                esc(commit or "–"),
                esc(params),
            ]
            if t.images:
                shown = t.images.get(name, [])
                cells.append("".join(image_tag(name, *figure) for figure in shown) or "–")
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
    for table in tables:
        table.images = experiment_figures(table.lab, data)
    text = markdown(tables)
    write_text(REPORT, text)
    write_text(HTML_REPORT, html_page(tables))
    return text
