"""The HTML report: the summary first, its figures those of the metrics files, the params folded
at the end, MLflow run ids linked; it opens in headless Chromium with every image loaded and no
console error.

The report's inputs are made here from real MNIST in seconds: a nearest-class-mean classifier
and noisy training images as "generated" samples, scored by digitlab.metrics as the stages do.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from digitlab.data import Split, load_split
from digitlab.metrics import classifier_report, gan_quality
from digitlab.params import parse_params
from digitlab.plots import class_rows, save_grid
from digitlab.report import STAGES, MlflowRuns, build_report, data_uri, latest_stage_runs, run_url
from helpers import ROOT, chromium, render, set_key

SQLITE = "sqlite:////somewhere/mlflow.db"
Repo = Callable[[int | str, bool], Path]  # the `repo` fixture


def test_check_harness_catches_a_broken_image(tmp_path: Path) -> None:
    chromium()  # skips without it
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img alt="gone" src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    check, errors = render(page, tmp_path)
    assert check == {"images": 1, "broken": ["gone"]}
    assert "boom" in errors and any("failed to load" in e and "missing.png" in e for e in errors)


# ---------------------------------------------------------------- the report's inputs


@dataclass(frozen=True)
class Data:
    """The first 6,000 training and 2,000 test images of real MNIST, prepare's summary."""

    train: Split
    test: Split
    summary: dict
    means: torch.Tensor  # 10×784: the mean training image of each class

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """A nearest-class-mean classifier's probabilities."""
        return torch.softmax(-torch.cdist(images.flatten(1), self.means), 1)


def make_repo(root: Path, data: Data, digit: int | str, gan: bool) -> Path:
    """params.yaml and the reports/ files the report reads, as the stages write them."""
    train, test = data.train, data.test
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_key(raw, "digit", digit)
    params = parse_params(raw)
    reports = root / "reports"
    for folder in ("data", "classifier", "gan"):
        (reports / folder).mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (reports / "data/summary.json").write_text(json.dumps(data.summary))
    save_grid(class_rows(train), reports / "data/examples.png", nrow=10)
    metrics, details, _, _ = classifier_report(test.labels, data.probs(test.images), params.digits)
    (reports / "classifier/metrics.json").write_text(json.dumps(metrics))
    (reports / "classifier/details.json").write_text(json.dumps(details))
    if gan:  # "generated": noisy training images, scored as evaluate_gan does
        real_train, real_test = train.of_digits(params.digits), test.of_digits(params.digits)
        noise = torch.rand((300, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        samples = (real_train.images[-300:] + 0.3 * noise).clamp(0, 1)
        others = real_train.images[:-300][:2000]  # training images the samples were not made of
        real = {"test": Split(real_test.images[:500], real_test.labels[:500]),
                "train": Split(others, real_train.labels[:-300][:2000])}  # fmt: skip
        images = {"samples": samples, **{name: split.images for name, split in real.items()}}
        features = {name: data.probs(batch).log() for name, batch in images.items()}
        quality, gan_details = gan_quality(
            samples, None, data.probs(samples), data.probs(images["test"]), features, real,
            params.digits, params.gan_eval.threshold,
        )  # fmt: skip
        (reports / "gan/metrics.json").write_text(json.dumps(quality))
        (reports / "gan/details.json").write_text(json.dumps(gan_details))
        save_grid(samples[:100], reports / "gan/samples.png", nrow=10)
    return root


@pytest.fixture(scope="module")
def repo(prepared: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """repo(digit, gan): a folder with params.yaml and reports/ (reports/gan/ empty without
    gan), made once per module; tests only read it."""
    folder, summary = prepared
    train, test = load_split(folder, "train"), load_split(folder, "test")
    train = Split(train.images[:6000].clone(), train.labels[:6000].clone())
    test = Split(test.images[:2000].clone(), test.labels[:2000].clone())
    means = torch.stack([train.images[train.labels == c].mean(0).flatten() for c in range(10)])
    data = Data(train, test, summary, means)
    made: dict[tuple[int | str, bool], Path] = {}

    def get(digit: int | str, gan: bool) -> Path:
        if (digit, gan) not in made:
            made[digit, gan] = make_repo(tmp_path_factory.mktemp("repo"), data, digit, gan)
        return made[digit, gan]

    return get


def stage_runs(tracking_uri: str) -> MlflowRuns:
    """Runs as the report stage passes them: every stage but one found, its own run, the parent."""
    ids = {stage: uuid.uuid4().hex for stage in STAGES if stage != "train_gan"}
    return MlflowRuns(tracking_uri, "7", ids, report=uuid.uuid4().hex, pipeline=uuid.uuid4().hex)


def page_of(root: Path, runs: MlflowRuns) -> str:
    return build_report(root, runs, root / "reports/gan/progress.gif")


def headline(page: str) -> list[tuple[str, float]]:
    """The summary table's rows: label, and value (shown as 12.34% or 1.23×) as a number."""
    table = re.search(r'<table class="headline">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r'<tr><td class="key">(.*?)</td><td>(.*?)</td></tr>', table)
    rows = [(html.unescape(label), html.unescape(value)) for label, value in rows]
    return [(label, float(value.rstrip("%×")) / (100 if value[-1] == "%" else 1))
            for label, value in rows]  # fmt: skip


# ---------------------------------------------------------------- layout and figures


@pytest.mark.parametrize("digit", [3, "all"])
def test_summary_comes_first_with_the_figures_of_the_metrics_files(
    repo: Repo, digit: int | str
) -> None:
    root = repo(digit, True)
    page = page_of(root, stage_runs(SQLITE))
    cls = json.loads((root / "reports/classifier/metrics.json").read_text())
    gan = json.loads((root / "reports/gan/metrics.json").read_text())

    # the detector's figures: for the digit, or their mean over all ten
    expected = [("accuracy", cls["accuracy"]), ("precision", cls["detector"]["precision"]),
                ("recall", cls["detector"]["recall"])]  # fmt: skip
    expected += [("decent rate", gan["decent_rate"]), ("Fréchet ratio", gan["frechet_ratio"])]
    if digit == "all":  # grouped by the digit the classifier sees (an unconditional GAN)
        expected += [("worst digit (seen): decent rate", gan["decent_rate_worst"]),
                     ("median per-digit Fréchet ratio", gan["frechet_ratio_median"]),
                     ("classifier score", gan["classifier_score"])]  # fmt: skip
    rows = headline(page)
    assert len(rows) == len(expected)
    for (label, value), (word, truth) in zip(rows, expected, strict=True):
        assert word in label
        if "Fréchet ratio" in word:  # shown as 1.23×: 3 significant digits
            assert value == pytest.approx(truth, rel=5e-3)
        else:  # 12.34% (to 0.00005), a score as 9.87
            assert value == pytest.approx(truth, abs=5e-3 if "score" in word else 5e-5)

    # Summary (its table, the final grid, its links), then the details, the params last
    samples = root / "reports/gan/samples.png"
    grid = page.index('alt="Final samples: 100 images of the saved generator"')
    order = ['<h1>', 'id="summary"', '<table class="headline">', 'id="data"', 'id="classifier"',
             'id="gan"', 'id="mlflow-runs"', 'id="parameters"', "<details>"]  # fmt: skip
    positions = [page.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert positions[2] < grid < positions[3]
    assert page.count(data_uri(samples)) == 1  # in the summary only
    summary = page[positions[1] : positions[3]]
    anchors = re.findall(r'href="#([^"]+)"', summary)
    assert set(anchors) == {"data", "classifier", "gan", "mlflow-runs", "parameters"}
    assert all(f'id="{anchor}"' in page for anchor in anchors)
    per_digit = "<h3>Per digit (samples grouped by the digit the classifier sees)</h3>"
    assert (per_digit in page) == (digit == "all")


def test_params_are_folded_at_the_end(repo: Repo) -> None:
    root = repo(3, True)
    page = page_of(root, stage_runs(SQLITE))
    blocks = re.findall(r"<details(.*?)>(.*?)</details>", page, re.S)
    assert len(blocks) == 1
    attributes, inside = blocks[0]
    assert "open" not in attributes  # collapsed until clicked
    title, shown = re.fullmatch(r"<summary>(.*?)</summary><pre>(.*)</pre>", inside, re.S).groups()
    assert title == "Parameters (params.yaml)"
    assert yaml.safe_load(html.unescape(shown)) == yaml.safe_load(
        (root / "params.yaml").read_text()
    )
    assert page.count("val_size:") == 1  # nowhere else


def test_report_without_gan_metrics_still_builds(repo: Repo) -> None:
    root = repo(3, False)
    page = page_of(root, MlflowRuns(SQLITE))
    table = re.search(r'<table class="headline">(.*?)</table>', page, re.S).group(1)
    assert table.count("<td>run evaluate_gan</td>") == 2  # decent rate and Fréchet ratio
    assert "reports/gan/samples.png is missing: run its stage" in page
    assert "<p><em>run evaluate_gan</em></p>" in page  # the GAN metrics section
    assert "In MLflow" not in page and page.count("not found") == len(STAGES)


# ---------------------------------------------------------------- MLflow links


@pytest.mark.parametrize(
    ("tracking_uri", "base"),
    [
        ("http://mlflow.example:8080/", "http://mlflow.example:8080"),
        ("https://tracking.example/mlflow", "https://tracking.example/mlflow"),
        (SQLITE, "http://127.0.0.1:5000"),  # the `make ui` address
    ],
)
def test_run_ids_link_to_their_mlflow_pages(repo: Repo, tracking_uri: str, base: str) -> None:
    assert run_url(tracking_uri, "7", "abc") == f"{base}/#/experiments/7/runs/abc"
    root = repo(3, True)
    runs = stage_runs(tracking_uri)
    page = page_of(root, runs)
    for run_id in [*runs.stages.values(), runs.report]:
        assert f'<a href="{base}/#/experiments/7/runs/{run_id}">{run_id}</a>' in page
    for run_id in (runs.report, runs.pipeline):  # in the summary too
        assert f'<a href="{base}/#/experiments/7/runs/{run_id}">this ' in page
    assert f'<a href="{base}/#/experiments/7">' in page
    outside_links = re.sub(r"<a [^>]*>.*?</a>", "", page)
    assert not any(run_id in outside_links for run_id in [*runs.stages.values(), runs.report])
    assert outside_links.count("not found") == 1  # train_gan


@pytest.mark.slow  # a real MLflow store: its creation takes 10 to 20 s
def test_latest_stage_runs_finds_runs_and_their_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from digitlab.store import EXPERIMENT, KIND_TAG, PIPELINE_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert latest_stage_runs("p1", "workspace") == MlflowRuns(uri)  # no experiment yet
    client = mlflow.MlflowClient(uri)
    client.create_experiment("other")
    experiment = client.create_experiment(EXPERIMENT)

    def stage_run(stage: str, pipeline: str, status: str = "FINISHED") -> str:
        tags = {
            "dvc.stage": stage,
            KIND_TAG: "stage",
            PIPELINE_TAG: pipeline,
            "dvc.exp": "workspace",
        }
        run = client.create_run(experiment, run_name=stage, tags=tags)
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    ours = {stage: stage_run(stage, "p1") for stage in ("prepare", "evaluate")}
    stage_run("evaluate", "p2")  # newer, but another pipeline's
    stage_run("prepare", "p1", "FAILED")  # newer, but failed
    found = latest_stage_runs("p1", "workspace")
    assert found == MlflowRuns(uri, experiment, ours)
    assert found.url(ours["evaluate"]) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{ours['evaluate']}"
    )


def test_report_renders_in_chromium(repo: Repo, tmp_path: Path) -> None:
    chromium()  # skips without it
    root = repo(3, True)
    page = tmp_path / "index.html"
    page.write_text(page_of(root, stage_runs(SQLITE)))
    check, errors = render(page, tmp_path)
    assert check == {"images": 2, "broken": []}  # the training examples and the final samples
    assert errors == []
