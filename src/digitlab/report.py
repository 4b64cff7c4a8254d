"""The HTML report: one self-contained page (images embedded) of a pipeline's results."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from digitlab.flat import flatten

STAGES = ("fetch", "prepare", "train_classifier", "evaluate", "train_gan", "evaluate_gan")
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #4c72b0; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #4c72b0; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th { background: #eef; }
td.key, th.key { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; margin: .5em 0; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: .5em; }
.grid figure { width: 180px; margin: 0; }
.summary { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
.summary table.headline td + td { font-size: 1.3em; font-weight: 600; }
.summary figure { margin: 1em 0; } .summary img { width: 360px; }
.summary ul { padding-left: 1.2em; margin: .3em 0; } .summary li { margin: .2em 0; }
details { margin: 1em 0; } details > summary { cursor: pointer; color: #4c72b0; }
"""


def data_uri(path: Path) -> str:
    """A file as a base64 data: URI (PNG or GIF)."""
    mime = "image/gif" if path.suffix == ".gif" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def figure(path: Path, caption: str) -> str:
    """An embedded image with its caption, or a note that it is missing."""
    if not path.is_file():
        return f"<p><em>{html.escape(str(path))} is missing: run its stage.</em></p>"
    return (
        f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("", "")) -> str:
    """A two-column key / value table; floats to 4 significant places."""

    def fmt(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = f'<tr><th class="key">{header[0]}</th><th>{header[1]}</th></tr>' if any(header) else ""
    body = "".join(
        f'<tr><td class="key">{html.escape(k)}</td><td>{fmt(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{head}{body}</table>"


def frame_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")


def progress_gif(frames: list[Path], out: Path, ms_per_frame: int = 600) -> None:
    """An animated GIF of the fixed-noise grids, looping, the last frame held longer."""
    from PIL import Image

    images = [Image.open(p).convert("P", palette=Image.Palette.ADAPTIVE) for p in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 4]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
    )
    out.write_bytes(buffer.getvalue())


# The address `make ui` serves the project's SQLite store on (the Makefile's UI_PORT default).
LOCAL_UI = "http://127.0.0.1:5000"


def mlflow_base(tracking_uri: str) -> str:
    """The MLflow UI's address: the tracking server itself, else the `make ui` address."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The page of one run in the MLflow UI."""
    return f"{mlflow_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass(frozen=True)
class MlflowRuns:
    """The MLflow runs a report links to: the latest run of each stage, the report's own run
    and its pipeline's parent run, in experiment `experiment_id` of the store `tracking_uri`."""

    tracking_uri: str
    experiment_id: str | None = None
    stages: dict[str, str] = field(default_factory=dict)  # stage -> run id
    report: str | None = None
    pipeline: str | None = None

    def url(self, run_id: str) -> str:
        """The run's page (a run of this experiment)."""
        return run_url(self.tracking_uri, self.experiment_id or "", run_id)

    def experiment_url(self) -> str:
        """The experiment's page: every run, pipelines with their stage runs nested."""
        return f"{mlflow_base(self.tracking_uri)}/#/experiments/{self.experiment_id}"

    def cell(self, run_id: str | None) -> str:
        """A run id linked to its page, or 'not found'."""
        return link(self.url(run_id), run_id) if run_id else "not found"


def latest_stage_runs(pipeline: str | None = None, exp: str | None = None) -> MlflowRuns:
    """The most recent finished MLflow run of each stage, and the experiment they are in.

    Runs of the same pipeline come first (the stages this pipeline ran itself), then runs of
    the same DVC experiment, then workspace runs (a queued experiment takes the stages it did
    not rerun from its baseline), then any: so queued experiments running side by side never
    report each other's runs.
    """
    import mlflow

    from digitlab.store import EXPERIMENT, KIND_TAG, PIPELINE_TAG, WORKSPACE, tracking_uri

    uri = tracking_uri()
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return MlflowRuns(uri)
    scopes = [f"tags.`{PIPELINE_TAG}` = '{pipeline}'"] if pipeline else []
    scopes += [f"tags.`dvc.exp` = '{name}'" for name in dict.fromkeys([exp, WORKSPACE]) if name]
    scopes.append("")
    runs = {}
    for stage in STAGES:
        query = f"tags.`dvc.stage` = '{stage}' and tags.`{KIND_TAG}` = 'stage' and attributes.status = 'FINISHED'"
        for scope in scopes:
            found = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"{query} and {scope}" if scope else query,
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found:
                runs[stage] = found[0].info.run_id
                break
    return MlflowRuns(uri, experiment.experiment_id, runs)


def link(url: str, text: str) -> str:
    """An <a> element, both parts escaped."""
    return f'<a href="{html.escape(url)}">{html.escape(text)}</a>'


def headline_figures(
    cls: dict, gan: dict, digit: Any, threshold: Any, conditional: bool = False
) -> list[tuple[str, str]]:
    """The summary's (label, value) rows: rates as percentages, the Fréchet ratio as a factor;
    with every digit, the worst digit, the median per-digit ratio and the classifier score."""
    detector = cls["detector"]
    of = f"for {digit}" if digit != "all" else "(mean over the digits)"
    rows = [
        ("Multiclass test accuracy", f"{cls['accuracy']:.2%}"),
        (f"Detector {of}: precision", f"{detector['precision']:.2%}"),
        (f"Detector {of}: recall", f"{detector['recall']:.2%}"),
    ]
    if conditional:
        judged = "the digit asked for"
    else:
        judged = "some digit" if digit == "all" else f"a {digit}"
    decent = f"GAN decent rate (judged {judged}, p ≥ {threshold})"
    ratio = "GAN Fréchet ratio (samples to real / real to real)"
    if not gan:
        return [*rows, (decent, "run evaluate_gan"), (ratio, "run evaluate_gan")]
    rows += [(decent, f"{gan['decent_rate']:.2%}"), (ratio, f"{gan['frechet_ratio']:.3g}×")]
    if digit == "all":
        by = "asked for" if conditional else "seen"
        median = gan["frechet_ratio_median"]
        rows += [
            (f"GAN worst digit ({by}): decent rate", f"{gan['decent_rate_worst']:.2%}"),
            (
                f"GAN median per-digit Fréchet ratio ({by})",
                "n/a" if median is None else f"{median:.3g}×",
            ),
            (
                f"GAN classifier score (real test images: {gan['classifier_score_real']:.2f})",
                f"{gan['classifier_score']:.2f}",
            ),
        ]
    return rows


def summary_section(
    rows: list[tuple[str, str]], samples: Path, runs: MlflowRuns, sections: dict[str, str]
) -> str:
    """The report's first screen: headline figures and links beside the final sample grid."""
    figures = "".join(
        f'<tr><td class="key">{html.escape(k)}</td><td>{html.escape(v)}</td></tr>' for k, v in rows
    )
    anchors = " · ".join(link(f"#{anchor}", title) for anchor, title in sections.items())
    own = {"this pipeline's run": runs.pipeline, "this report's run": runs.report}
    mlflow_links = [link(runs.url(run_id), label) for label, run_id in own.items() if run_id]
    if runs.experiment_id:
        mlflow_links.append(link(runs.experiment_url(), "every run of the experiment"))
    mlflow_item = f"<li>In MLflow: {', '.join(mlflow_links)}</li>" if mlflow_links else ""
    return (
        '<h2 id="summary">Summary</h2>\n<div class="summary"><div>'
        f'<table class="headline">{figures}</table>'
        f"<ul><li>Details: {anchors}</li>{mlflow_item}</ul></div>"
        f"{figure(samples, 'Final samples: 100 images of the saved generator')}</div>"
    )


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class Results:
    """What the stages wrote under reports/, and the params they ran with."""

    reports: Path
    params: dict
    summary: dict  # prepare's data summary
    cls: dict  # evaluate's headline metrics and details
    cls_details: dict
    gan: dict  # evaluate_gan's (empty before it ran)
    gan_details: dict

    @classmethod
    def read(cls, root: Path) -> Results:
        reports = root / "reports"
        return cls(
            reports,
            yaml.safe_load((root / "params.yaml").read_text()),
            _json(reports / "data/summary.json"),
            _json(reports / "classifier/metrics.json"),
            _json(reports / "classifier/details.json"),
            _json(reports / "gan/metrics.json"),
            _json(reports / "gan/details.json"),
        )

    @property
    def conditional(self) -> bool:
        return bool(self.params.get("gan", {}).get("conditional"))


def data_section(r: Results) -> list[str]:
    rows = pd.DataFrame(
        [
            {
                "split": s,
                "images": r.summary[s]["count"],
                "mean": r.summary[s]["mean"],
                "std": r.summary[s]["std"],
                **r.summary[s]["per_class"],
            }
            for s in ("train", "val", "test")
        ]
    )
    examples = figure(r.reports / "data/examples.png", "Training images, one row per class")
    return ['<h2 id="data">Data</h2>', frame_table(rows), examples]


def classifier_section(r: Results) -> list[str]:
    per_digit = (
        pd.DataFrame(r.cls_details.get("per_digit", {})).T.rename_axis("digit").reset_index()
    )
    figures = {
        "curves.png": "Loss and accuracy per epoch",
        "figures/confusion.png": "Confusion matrix on the test set",
        "figures/breakdown.png": "False positives and false negatives per other digit",
        "figures/mistakes.png": "The most confident mistakes",
    }
    return [
        '<h2 id="classifier">Classifier</h2>',
        table([(k, v) for k, v in flatten(r.cls, sep=" ").items()], ("metric", "test set")),
        "<h3>The detector, per digit</h3>",
        frame_table(per_digit),
        *(figure(r.reports / "classifier" / name, caption) for name, caption in figures.items()),
    ]


def gan_section(r: Results, gif: Path) -> list[str]:
    progress = sorted((r.reports / "gan/progress").glob("step_*.png"))
    progress_html = "".join(
        f'<figure><img src="{data_uri(p)}" alt="fixed noise at {p.stem}"><figcaption>G step '
        f"{int(p.stem.split('_')[1])}</figcaption></figure>"
        for p in progress
    )
    figures = {
        k: v
        for k, v in flatten({**r.gan, **r.gan_details}, sep=" ").items()
        if not k.startswith(("per_digit", "predicted_digits"))
    }
    per_digit = ""
    if len(r.gan_details.get("per_digit", {})) > 1:
        by = "the digit asked for" if r.conditional else "the digit the classifier sees"
        frame = pd.DataFrame(r.gan_details["per_digit"]).T.rename_axis("digit").reset_index()
        per_digit = f"<h3>Per digit (samples grouped by {by})</h3>" + frame_table(frame)
    rows = " (one row per digit asked for)" if r.conditional else ""
    return [
        '<h2 id="gan">GAN</h2>',
        figure(r.reports / "gan/losses.png", "GAN losses and discriminator outputs"),
        "<h3>Fixed-noise samples as training goes on</h3>",
        figure(gif, "The same 100 noise vectors through training (animated)"),
        f'<div class="grid">{progress_html}</div>',
        "<h3>Final samples</h3>",
        f'<p>100 samples of the saved generator: in the <a href="#summary">summary</a>{rows}.</p>',
        figure(
            r.reports / "gan/class_histogram.png",
            "Classes of the generated images, as the classifier sees them",
        ),
        "<h3>GAN metrics</h3>",
        table(list(figures.items()), ("metric", "value"))
        if figures
        else "<p><em>run evaluate_gan</em></p>",
        per_digit,
    ]


def runs_section(runs: MlflowRuns) -> list[str]:
    run_ids = [(stage, runs.stages.get(stage)) for stage in STAGES]
    run_ids += [("report (this page)", runs.report)] if runs.report else []
    rows = "".join(
        f'<tr><td class="key">{html.escape(label)}</td><td class="key">{runs.cell(run_id)}</td></tr>'
        for label, run_id in run_ids
    )
    header = '<tr><th class="key">stage</th><th class="key">run id</th></tr>'
    return ['<h2 id="mlflow-runs">MLflow runs</h2>', f"<table>{header}{rows}</table>"]


HEADINGS = {
    "data": "Data",
    "classifier": "Classifier",
    "gan": "GAN",
    "mlflow-runs": "MLflow runs",
    "parameters": "Parameters",
}


def build_report(root: Path, runs: MlflowRuns, gif: Path) -> str:
    """The whole page as HTML text: the summary first, the details, then the params (folded)."""
    r = Results.read(root)
    digit = r.params["digit"]
    threshold = r.params.get("gan_eval", {}).get("threshold", "?")
    rows = headline_figures(r.cls, r.gan, digit, threshold, r.conditional)
    params = html.escape(yaml.safe_dump(r.params, sort_keys=False))
    sections = [
        f"<h1>digitlab report: {html.escape(str(r.params['data']['dataset']))}, "
        f"digit {html.escape(str(digit))}</h1>",
        summary_section(rows, r.reports / "gan/samples.png", runs, HEADINGS),
        *data_section(r),
        *classifier_section(r),
        *gan_section(r, gif),
        *runs_section(runs),
        '<h2 id="parameters">Parameters</h2>',
        f"<details><summary>Parameters (params.yaml)</summary><pre>{params}</pre></details>",
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'
        f"<title>digitlab report</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
