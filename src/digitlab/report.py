"""The HTML report: one self-contained page (images embedded) of a pipeline's results."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

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


def latest_stage_runs(pipeline: str | None = None, exp: str | None = None) -> dict[str, str]:
    """The run id of the most recent finished MLflow run of each stage.

    Runs of the same pipeline come first (the stages this pipeline ran itself), then runs of
    the same DVC experiment, then workspace runs (a queued experiment takes the stages it did
    not rerun from its baseline), then any: so queued experiments running side by side never
    report each other's runs.
    """
    import mlflow

    from digitlab.tracking import EXPERIMENT, KIND_TAG, PIPELINE_TAG, WORKSPACE, tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
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
    return runs


def build_report(root: Path, run_ids: dict[str, str], gif: Path) -> str:
    """The whole page as HTML text."""
    reports = root / "reports"
    params = yaml.safe_load((root / "params.yaml").read_text())
    summary = json.loads((reports / "data/summary.json").read_text())
    cls = json.loads((reports / "classifier/metrics.json").read_text())
    gan_path = reports / "gan/metrics.json"
    gan = json.loads(gan_path.read_text()) if gan_path.is_file() else {}
    digit = params["digit"]

    data_rows = pd.DataFrame(
        [{"split": s, "images": summary[s]["count"], "mean": summary[s]["mean"], "std": summary[s]["std"],
          **summary[s]["per_class"]} for s in ("train", "val", "test")]
    )  # fmt: skip
    detector = cls["detector"]
    if "accuracy" in detector:
        detector_html = table(
            [(k, v) for k, v in detector.items()], ("detector for digit " + str(digit), "test set")
        )
    else:
        detector_html = frame_table(pd.DataFrame(detector).T.rename_axis("digit").reset_index())
    progress = sorted((reports / "gan/progress").glob("step_*.png"))
    progress_html = "".join(
        f'<figure><img src="{data_uri(p)}" alt="fixed noise at {p.stem}"><figcaption>G step '
        f"{int(p.stem.split('_')[1])}</figcaption></figure>"
        for p in progress
    )
    gan_rows = [(k, v) for k, v in gan.items() if not isinstance(v, dict)]
    runs_rows = [(stage, run_ids.get(stage, "not found")) for stage in STAGES]
    sections = [
        f"<h1>digitlab report: {params['data']['dataset']}, digit {digit}</h1>",
        "<h2>Parameters</h2>",
        f"<pre>{html.escape(yaml.safe_dump(params, sort_keys=False))}</pre>",
        "<h2>Data</h2>",
        frame_table(data_rows),
        figure(reports / "data/examples.png", "Training images, one row per class"),
        "<h2>Classifier</h2>",
        table([("multiclass test accuracy", cls["accuracy"]), ("test images", cls["n_test"])]),
        detector_html,
        figure(reports / "classifier/curves.png", "Loss and accuracy per epoch"),
        figure(reports / "classifier/figures/confusion.png", "Confusion matrix on the test set"),
        figure(
            reports / "classifier/figures/breakdown.png",
            "False positives and false negatives per other digit",
        ),
        figure(reports / "classifier/figures/mistakes.png", "The most confident mistakes"),
        "<h2>GAN</h2>",
        figure(reports / "gan/losses.png", "GAN losses and discriminator outputs"),
        "<h3>Fixed-noise samples as training goes on</h3>",
        figure(gif, "The same 100 noise vectors through training (animated)"),
        f'<div class="grid">{progress_html}</div>',
        "<h3>Final samples</h3>",
        figure(reports / "gan/samples.png", "100 samples of the saved generator"),
        figure(
            reports / "gan/class_histogram.png",
            "Classes of the generated images, as the classifier sees them",
        ),
        "<h3>GAN metrics</h3>",
        table(gan_rows, ("metric", "value")) if gan_rows else "<p><em>run evaluate_gan</em></p>",
        "<h2>MLflow runs</h2>",
        table(runs_rows, ("stage", "run id")),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,">'
        f"<title>digitlab report</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
