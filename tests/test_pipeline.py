"""End to end: `dvc repro` in a temporary copy of the repo, on real MNIST, with MLflow checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.bench import revisit_seconds
from digitlab.data import load_split
from digitlab.flat import flatten
from helpers import (
    ALL_STAGES,
    BIN,
    changed_stages,
    dvc,
    git,
    mlflow_runs,
    ran_stages,
    set_param,
)

pytestmark = pytest.mark.slow  # a copy of the repo where `dvc repro` really runs

DIGIT_STAGES = {"evaluate", "train_gan", "evaluate_gan", "report"}


def test_repro_writes_lock_outputs_and_metrics(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    path, env = tiny_repo
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert {"fetch", "prepare"} <= set(lock["stages"])
    fetch_outs = {o["path"]: o for o in lock["stages"]["fetch"]["outs"]}
    assert fetch_outs["data/raw/mnist"]["nfiles"] == 4
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"] == {
        "dataset": "mnist",
        "val_size": 5000,
    }
    assert len(load_split(path / "data/prepared", "val")) == 5000
    assert (path / "reports/data/examples.png").stat().st_size > 1000
    summary = json.loads((path / "reports/data/summary.json").read_text())
    assert summary["train"]["count"] == 55_000 and "mean" in summary["official_train"]
    # the files DVC compares hold the headline figures only: `dvc exp show` stays narrow
    shown = json.loads(dvc(path, env, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert set(files) == {"reports/classifier/metrics.json", "reports/gan/metrics.json"}
    values = [v for f in files.values() for v in flatten(f["data"]).values()]
    assert len(values) == 12 <= 15, values


def test_prepare_is_deterministic(
    tiny_repo: tuple[Path, dict[str, str]], prepared: tuple[Path, dict]
) -> None:
    path, _ = tiny_repo
    fixture_dir, summary = prepared
    for name in ("train", "val"):
        a, b = load_split(path / "data/prepared", name), load_split(fixture_dir, name)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert json.loads((path / "reports/data/summary.json").read_text()) == summary


def test_mlflow_has_one_run_per_stage_under_a_pipeline_parent(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, _ = tiny_repo
    runs = mlflow_runs(path)
    by_name = {r.info.run_name: r for r in runs}
    assert {"fetch", "prepare"} <= set(by_name)
    prepare = by_name["prepare"]
    assert prepare.info.status == "FINISHED"
    assert prepare.data.tags["dvc.stage"] == "prepare"
    assert prepare.data.tags["dataset"] == "mnist"
    assert len(prepare.data.tags["git.commit"]) == 40
    assert prepare.data.params["data.val_size"] == "5000"
    assert prepare.data.metrics["val/count"] == 5000
    parent_id = prepare.data.tags["mlflow.parentRunId"]
    assert by_name["fetch"].data.tags["mlflow.parentRunId"] == parent_id
    assert by_name["fetch"].data.tags["fetch.source"] in {"local-dir", "existing"}
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(prepare.info.run_id, "data")}
    assert artifacts == {"data/examples.png", "data/summary.json"}


def test_second_repro_runs_nothing_fast(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    path, env = tiny_repo
    start = time.perf_counter()
    result = dvc(path, env, "repro")
    elapsed = time.perf_counter() - start
    assert ran_stages(result.stdout) == set()
    # About 2 s alone; the other test process may be training on the second core.
    assert elapsed < 10, f"no-op repro took {elapsed:.1f} s"


def test_bad_dataset_fails_in_one_line_and_keeps_data(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    before = {p.name: p.stat().st_mtime_ns for p in (path / "data/raw/mnist").iterdir()}
    set_param(path, "data.dataset", "cifar100")
    try:
        result = dvc(path, env, "repro", check=False)
        assert result.returncode != 0
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("digitlab: error")]
        assert errors == [
            "digitlab: error: params.yaml: data.dataset = 'cifar100' is not allowed: "
            "Input should be 'mnist', 'fashion_mnist' or 'cifar10' "
            "(`dvc checkout fetch` restores its last good outputs)"
        ]
    finally:
        set_param(path, "data.dataset", "mnist")
    after = {p.name: p.stat().st_mtime_ns for p in (path / "data/raw/mnist").iterdir()}
    assert after == before
    assert not (path / "data/raw/cifar100").exists()


# ---------------------------------------------------------------- classifier stages


def read_metrics(repo: Path) -> dict:
    return json.loads((repo / "reports/classifier/metrics.json").read_text())


def read_details(repo: Path, stage: str = "classifier") -> dict:
    return json.loads((repo / f"reports/{stage}/details.json").read_text())


def test_classifier_outputs_recompute_from_predictions(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    import pandas as pd

    path, env = tiny_repo
    metrics, details = read_metrics(path), read_details(path)
    three = details["per_digit"]["3"]
    predictions = pd.read_csv(path / "reports/classifier/predictions.csv")
    assert list(predictions.columns) == ["index", "true", "predicted", "score"]
    assert len(predictions) == 10_000 == details["n_test"]
    assert metrics["accuracy"] == pytest.approx((predictions.true == predictions.predicted).mean())
    said_yes, is_three = predictions.predicted == 3, predictions.true == 3
    assert three["tp"] == (said_yes & is_three).sum()
    assert three["fp"] == (said_yes & ~is_three).sum()
    assert metrics["detector"] == {k: three[k] for k in ("accuracy", "precision", "recall", "f1")}
    assert metrics["detector"]["precision"] == pytest.approx(
        (said_yes & is_three).sum() / said_yes.sum()
    )
    assert metrics["accuracy"] > 0.9  # a 1-epoch MLP with 32 hidden units
    table = pd.read_csv(path / "reports/classifier/breakdown.csv")
    assert len(table) == 9 and table.false_positives.sum() == three["fp"]
    for figure in ("confusion.png", "breakdown.png", "mistakes.png"):
        assert (path / "reports/classifier/figures" / figure).stat().st_size > 5000
    history = pd.read_csv(path / "reports/classifier/history.csv")
    assert list(history.epoch) == [1]
    shown = dvc(path, env, "metrics", "show").stdout
    assert "detector.precision" in shown
    dvc(path, env, "plots", "show", "-o", str(path / "plots_html"))
    html = (path / "plots_html" / "index.html").read_text()
    assert "Confusion matrix (test set)" in html and "Classifier loss" in html


def test_classifier_runs_in_mlflow(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    import mlflow

    path, _ = tiny_repo
    runs = {r.info.run_name: r for r in mlflow_runs(path)}
    train, evaluate = runs["train_classifier"], runs["evaluate"]
    assert train.data.params["classifier.arch"] == "mlp"
    assert int(train.data.params["n_parameters"]) == 784 * 32 + 32 + 32 * 10 + 10
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(train.data.metrics)
    assert evaluate.data.metrics["test/accuracy"] == pytest.approx(read_metrics(path)["accuracy"])
    assert evaluate.data.params["classifier.hidden"] == "[32]"
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    history = client.get_metric_history(train.info.run_id, "val/acc")
    assert [m.step for m in history] == [1]
    assert (
        evaluate.data.metrics["test/per_digit/3/tp"] == read_details(path)["per_digit"]["3"]["tp"]
    )
    figures = {a.path for a in client.list_artifacts(evaluate.info.run_id, "classifier/figures")}
    assert figures == {
        f"classifier/figures/{name}.png" for name in ("confusion", "breakdown", "mistakes")
    }


def test_registered_classifier_reproduces_evaluate(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    """The registry's latest classifier, loaded as any MLflow user would (pyfunc, no digitlab
    code needed), scores the test set as `evaluate` did; its version and run say where it
    came from: FINISHED run, git commit, the prepared data's DVC hash, CPU and memory."""
    import mlflow

    path, _ = tiny_repo
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    store = mlflow.MlflowClient()
    version = store.get_model_version_by_alias("digitlab-classifier", "latest-mnist")
    model = mlflow.pyfunc.load_model("models:/digitlab-classifier@latest-mnist")
    test = load_split(path / "data/prepared", "test")
    predicted = model.predict(test.images.numpy()).argmax(1)
    accuracy = float((predicted == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(read_metrics(path)["accuracy"], abs=1e-4)
    with pytest.raises(mlflow.exceptions.MlflowException, match="shape"):  # the signature holds
        model.predict(test.images[:2].reshape(2, 784).numpy())
    broken = test.images[:2].clone()
    broken[1, 0, 5, 5] = float("nan")
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"^1 input values are not finite"):
        model.predict(broken.numpy())  # the guard the registered model runs behind

    run = store.get_run(version.run_id)
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    assert run.info.status == "FINISHED" and run.info.run_name == "train_classifier"
    assert (
        version.tags["dataset"] == "mnist"
        and version.tags["git.commit"] == run.data.tags["git.commit"]
    )
    commit = run.data.tags["mlflow.source.git.commit"]
    assert (
        commit == version.tags["git.commit"] and git(path, "cat-file", "-t", commit) == "commit\n"
    )
    assert run.data.tags["mlflow.source.name"] == "stages/train_classifier.py"
    (data,) = run.inputs.dataset_inputs
    prepared = next(o for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    assert (data.dataset.name, data.dataset.digest) == ("mnist-prepared", prepared["md5"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    experiment = store.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_registered_generator_is_the_dvc_tracked_one(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    import mlflow

    from digitlab.checkpoints import load_generator

    path, _ = tiny_repo
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    version = mlflow.MlflowClient().get_model_version_by_alias(
        "digitlab-generator", "latest-mnist-3"
    )
    assert version.tags["digit"] == "3" and version.tags["dataset"] == "mnist"
    model = mlflow.pyfunc.load_model(f"models:/digitlab-generator/{version.version}")
    generator, _ = load_generator(path / "models/generator.pt")
    latent = torch.randn(
        8, generator.config.latent_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        expected = generator.eval()(latent).numpy()
    assert model.predict(latent.numpy()) == pytest.approx(expected, abs=1e-6)


def test_digit_change_reevaluates_without_retraining(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    model = (path / "models/classifier.pt").read_bytes()
    generator = (path / "models/generator.pt").read_bytes()
    set_param(path, "digit", 7)
    try:
        assert changed_stages(path, env) == DIGIT_STAGES  # report prints every param
        assert ran_stages(dvc(path, env, "repro").stdout) == DIGIT_STAGES
        table = __import__("pandas").read_csv(path / "reports/classifier/breakdown.csv")
        assert set(table.digit) == {7} and 7 not in set(table.other)
        seven = read_details(path)["per_digit"]["7"]
        assert seven["tp"] + seven["fn"] == 1028
    finally:
        set_param(path, "digit", 3)
        start = time.perf_counter()
        back = dvc(path, env, "repro")
        seconds = time.perf_counter() - start
    # Back at digit 3: every stage comes back from DVC's run-cache, nothing trains.
    assert ran_stages(back.stdout) == set(), back.stdout
    assert "Stage 'train_gan' is cached - skipping run, checking out outputs" in back.stdout
    assert seconds < 15, f"going back took {seconds:.1f} s"
    assert (path / "models/classifier.pt").read_bytes() == model
    assert (path / "models/generator.pt").read_bytes() == generator
    assert not changed_stages(path, env)


def test_a_conditional_gan_makes_every_digit_on_demand(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    """digit: all with gan.conditional: judged per digit asked for, registered in MLflow as a
    model that takes [digit, latent…]; the other kind of generator is refused in one line."""
    import subprocess

    import mlflow

    from digitlab.checkpoints import load_generator

    path, env = tiny_repo
    params = (path / "params.yaml").read_text()
    set_param(path, "digit", "all")
    set_param(path, "gan.conditional", True)
    set_param(path, "gan.batch_size", 1024)  # one pass over all 55,000 images: 53 steps
    try:
        dvc(path, env, "repro")
        metrics = json.loads((path / "reports/gan/metrics.json").read_text())
        per_digit = read_details(path, "gan")["per_digit"]
        assert sorted(per_digit) == [str(d) for d in range(10)]
        assert {row["share"] for row in per_digit.values()} == {0.1}
        assert metrics["decent_rate_worst"] <= metrics["decent_rate"]
        ratios = sorted(row["frechet_ratio"] for row in per_digit.values())
        assert metrics["frechet_ratio_median"] == pytest.approx((ratios[4] + ratios[5]) / 2)
        assert metrics["classifier_score_real"] > 5  # the real test images of all ten digits
        assert (
            "Per digit (samples grouped by the digit asked for)"
            in (path / "reports/index.html").read_text()
        )

        mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
        model = mlflow.pyfunc.load_model("models:/digitlab-generator@latest-mnist-all")
        generator, _ = load_generator(path / "models/generator.pt", conditional=True)
        latent = torch.randn(
            4, generator.config.latent_size, generator=torch.Generator().manual_seed(1)
        )
        digits = torch.tensor([0, 3, 7, 9])
        with torch.inference_mode():
            expected = generator.eval()(latent, digits).numpy()
        inputs = torch.cat([digits[:, None].float(), latent], 1).numpy()
        assert model.predict(inputs) == pytest.approx(expected, abs=1e-6)

        set_param(path, "gan.conditional", False)  # the generator on disk is conditional
        result = subprocess.run(
            [str(Path(env["PATH"].split(os.pathsep)[0]) / "python"), "stages/evaluate_gan.py"],
            cwd=path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            .splitlines()[0]
            .startswith(
                "digitlab: error: models/generator.pt is a conditional generator but params.yaml "
                "has gan.conditional=false: run `dvc repro train_gan`"
            )
        ), result.stderr
    finally:
        (path / "params.yaml").write_text(params)
        back = dvc(path, env, "repro")
    assert ran_stages(back.stdout) == set(), back.stdout  # all from DVC's run-cache
    assert not changed_stages(path, env)


def test_same_params_and_seed_give_identical_metrics(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    before = (path / "reports/classifier/metrics.json").read_bytes()
    dvc(path, env, "repro", "-f", "-s", "train_classifier")
    dvc(path, env, "repro", "-f", "-s", "evaluate")
    assert (path / "reports/classifier/metrics.json").read_bytes() == before
    # torch.save writes a fresh serialization id, so downstream stages are out of date now:
    # back to the committed outputs, from DVC's cache.
    git(path, "checkout", "-q", "--", "dvc.lock")
    dvc(path, env, "checkout", "--force")
    assert not changed_stages(path, env)


def test_diverging_training_fails_cleanly_and_its_model_comes_back(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    model = (path / "models/classifier.pt").read_bytes()
    params = (path / "params.yaml").read_text()
    set_param(path, "classifier.optimizer.name", "sgd")
    set_param(path, "classifier.optimizer.lr", 10.0)
    set_param(path, "classifier.scheduler", "none")
    try:
        result = dvc(path, env, "repro", check=False)
        assert result.returncode != 0
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("digitlab: error")]
        assert len(errors) == 1 and "classifier.optimizer.lr=10.0" in errors[0]
        # DVC removed the stage's outputs before running it; the line says how to get them back.
        assert errors[0].endswith(
            "(`dvc checkout train_classifier` restores its last good outputs)"
        )
        assert not (path / "models/classifier.pt").exists()
        dvc(path, env, "checkout", "train_classifier")
        assert (path / "models/classifier.pt").read_bytes() == model
        failed = [r for r in mlflow_runs(path) if r.info.run_name == "train_classifier"]
        assert failed[0].info.status == "FAILED"  # newest first
    finally:
        (path / "params.yaml").write_text(params)
    assert not changed_stages(path, env)


def test_gan_outputs_and_mlflow_run(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    import mlflow
    import pandas as pd

    from digitlab.checkpoints import load_checkpoint, load_generator

    path, _ = tiny_repo
    generator, checkpoint = load_generator(path / "models/generator.pt")
    assert generator.config.hidden == [32, 64] and checkpoint["digit"] == 3
    assert load_checkpoint(path / "models/discriminator.pt", "discriminator")["config"][
        "hidden"
    ] == [64, 32]
    history = pd.read_csv(path / "reports/gan/history.csv")
    assert list(history.columns) == ["step", "d_loss", "g_loss", "d_real", "d_fake", "seconds"]
    steps = 5620 // 64  # training images of digit 3 after the default split, batch 64
    assert list(history.step) == [steps]
    grids = sorted(p.name for p in (path / "reports/gan/progress").iterdir())
    assert grids == [f"step_{round(steps / 2):06d}.png", f"step_{steps:06d}.png"]
    run = next(r for r in mlflow_runs(path) if r.info.run_name == "train_gan")
    assert run.data.params["gan.generator.layers"] == "[32, 64]"
    assert {"gan/d_loss", "gan/g_loss", "gan/d_real", "gan/d_fake", "gan/diversity_ratio"} <= set(
        run.data.metrics
    )
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    assert len(client.list_artifacts(run.info.run_id, "gan/progress")) == 2


def test_evaluate_gan_metrics_and_gan_eval_change(tiny_repo: tuple[Path, dict[str, str]]) -> None:
    path, env = tiny_repo
    metrics = {
        **json.loads((path / "reports/gan/metrics.json").read_text()),
        **read_details(path, "gan"),
    }
    assert metrics["num_samples"] == 500
    assert 0 <= metrics["decent_rate"] <= 1 and metrics["frechet_floor"] > 0
    assert metrics["frechet_ratio"] == pytest.approx(metrics["frechet"] / metrics["frechet_floor"])
    assert (path / "reports/gan/samples.png").stat().st_size > 5000
    assert "reports/gan/metrics.json" in dvc(path, env, "metrics", "show").stdout
    set_param(path, "gan_eval.threshold", 0.5)
    try:
        assert changed_stages(path, env) == {"evaluate_gan", "report"}
        assert ran_stages(dvc(path, env, "repro").stdout) == {"evaluate_gan", "report"}
        looser = json.loads((path / "reports/gan/metrics.json").read_text())
        assert looser["decent_rate"] >= metrics["decent_rate"]
        assert read_details(path, "gan")["frechet"] == pytest.approx(
            metrics["frechet"]
        )  # same samples
    finally:
        set_param(path, "gan_eval.threshold", 0.9)
        dvc(path, env, "repro")
    run = next(r for r in mlflow_runs(path) if r.info.run_name == "evaluate_gan")
    assert "gan_eval/decent_rate" in run.data.metrics


def test_the_bench_revisit_comes_back_from_the_run_cache_outside_make(
    tiny_repo: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m benchmarks.bench` run without the venv on PATH (outside `make`): the copy's
    stages still run with this Python, and setting a key back reruns nothing."""
    path, env = tiny_repo
    dvc(path, env, "repro")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    outside = [p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN]
    monkeypatch.setenv("PATH", os.pathsep.join(outside))
    timings = revisit_seconds(path, "gan_eval.threshold", 0.8)
    assert timings is not None, "the tiny repo is up to date"
    assert timings["away_ran"] == ["evaluate_gan", "report"] and timings["back_ran"] == []
    assert changed_stages(path, env) == set()  # the repo itself untouched


def test_report_is_self_contained_and_renders_in_chromium(
    tiny_repo: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    from helpers import chromium, render

    path, _ = tiny_repo
    page = (path / "reports/index.html").read_text()
    assert not re.search(
        r'<(img|script|link|iframe)[^>]*(src|href)="https?:', page
    )  # nothing loaded
    for heading in ("Parameters", "Data", "Classifier", "GAN", "GAN metrics", "MLflow runs"):
        assert f">{heading}</h" in page
    finished: dict[str, set[str]] = {}
    for run in mlflow_runs(path):
        if run.info.status == "FINISHED":
            finished.setdefault(run.info.run_name, set()).add(run.info.run_id)
    # The runs that made these outputs (restored from the run-cache, they need not be the newest)
    for stage in ("evaluate_gan", "train_classifier"):
        assert sum(run_id in page for run_id in finished[stage]) == 1, stage
    assert (path / "reports/gan/progress.gif").read_bytes()[:6] == b"GIF89a"
    chromium()  # skips without it
    check, errors = render(path / "reports/index.html", tmp_path)
    grids = len(list((path / "reports/gan/progress").glob("*.png")))
    assert check["broken"] == [] and check["images"] == 9 + grids  # 9 figures, the GIF among them
    assert errors == []


# The last two tests leave the outputs out of date with params.yaml: keep them last.


def test_val_size_change_reruns_prepare_and_downstream(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    set_param(path, "data.val_size", 6000)
    try:
        assert changed_stages(path, env) == {"prepare", "report"}
        assert ran_stages(dvc(path, env, "repro", "prepare").stdout) == {"prepare"}
        assert len(load_split(path / "data/prepared", "val")) == 6000
        # New prepared data: everything downstream of it is out of date now.
        assert changed_stages(path, env) == ALL_STAGES - {"fetch", "prepare"}
        diff = dvc(path, env, "params", "diff").stdout
        assert "data.val_size" in diff and "6000" in diff
    finally:  # the next test reruns every stage anyway
        set_param(path, "data.val_size", 5000)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed (make test installs it as root)",
)
def test_fashion_mnist_flows_through_the_same_stages(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    set_param(path, "data.dataset", "fashion_mnist")
    try:
        result = dvc(path, env, "repro")
        assert ran_stages(result.stdout) == ALL_STAGES
        assert "fetch: trying debian" in result.stdout
        train = load_split(path / "data/prepared", "train")
        assert train.images.shape == (55_000, 1, 28, 28) and train.images.dtype == torch.float32
        summary = json.loads((path / "reports/data/summary.json").read_text())
        assert summary["dataset"] == "fashion_mnist"
        assert summary["test"]["per_class"] == {str(c): 1000 for c in range(10)}
        assert (path / "data/raw/mnist").is_dir()  # the MNIST files stay for a switch back
    finally:
        set_param(path, "data.dataset", "mnist")
        shutil.rmtree(path / "data/raw/fashion_mnist", ignore_errors=True)
