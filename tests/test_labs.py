"""The labs as named DVC experiments: every lab file validates, a typo fails with one line
naming the file and key, and a tiny lab runs end to end through the queue into `dvc exp show`,
MLflow and reports/labs.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from digitlab.labs import MAX_EXPERIMENTS, LabError, LabFile, expand, load_labs
from digitlab.labs.queue import set_options
from helpers import DVC_TIMEOUT, ROOT, alias_bomb, client, dvc, git

LABS = {"lab4", "lab5", "lab6", "notebook", "seeds", "tutorial"}


def test_every_lab_file_validates_and_names_its_experiments() -> None:
    labs = {lab.name: lab for lab in load_labs(root=ROOT)}
    assert set(labs) == LABS
    names = [s.name for lab in labs.values() for s in lab.setups]
    assert len(names) == len(set(names))
    lab6 = [s.name for s in labs["lab6"].setups]
    # 2 datasets × 3 losses × 2 optimizers, and the wider LeNet-5 on each dataset
    assert len(lab6) == 14 and "lab6-fashion_mnist-mse-sgd" in lab6
    sgd = next(s for s in labs["lab6"].setups if s.name == "lab6-mnist-bce-sgd").overrides
    assert sgd["classifier.optimizer.name"] == "sgd" and sgd["classifier.loss"] == "bce"
    assert sgd["classifier.arch"] == "lenet5"  # the lab's common params reach every experiment
    regression = next(s for s in labs["tutorial"].setups if s.name == "tutorial-regression")
    assert regression.overrides["classifier.head"] == "regression"
    # the classifier-only labs stop at evaluate; the GAN labs run every stage, and queue first
    assert labs["lab6"].spec.stages == ["evaluate"] == labs["tutorial"].spec.stages
    order = [lab.name for lab in load_labs(root=ROOT)]
    assert order.index("lab5") < order.index("lab6")


def write_lab(root: Path, name: str, text: str) -> None:
    (root / "labs").mkdir(exist_ok=True)
    (root / "labs" / f"{name}.yaml").write_text(text)


GOOD = """title: t
question: q
columns: [classifier/accuracy]
experiments:
  a: {classifier.epochs: 2}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("classifier.epochs", "classifier.epoch"),
         "labs/x.yaml (x-a): unknown key 'classifier.epoch' (allowed here: arch, "),
        (GOOD.replace("2}", "0}"),
         "labs/x.yaml (x-a): classifier.epochs = 0 is not allowed: "),
        (GOOD.replace("classifier.epochs: 2", "classifier.head: regression"),
         "labs/x.yaml (x-a): classifier.loss = 'ce' is not allowed: classifier.head regression "
         "learns the digit's value by mse"),
        (GOOD.replace("classifier.epochs", "seed.x"), "labs/x.yaml (x-a): seed.x: seed is not a section"),
        (GOOD.replace("columns", "colums"), "labs/x.yaml: colums: Extra inputs are not permitted"),
        (GOOD.replace("[classifier/accuracy]", "[accuracy]"),
         "labs/x.yaml: columns: 'accuracy' is not a headline metric (classifier/accuracy, "),
        (GOOD + "stages: [evaluat]\n", "labs/x.yaml: stages.0: Input should be 'fetch'"),
        (GOOD.replace("  a:", "  A b:"), "labs/x.yaml: experiment name 'x-A b': use lowercase"),
        ("title: t\nquestion: q\ncolumns: [classifier/accuracy]\n", "labs/x.yaml: no experiments"),
        ("title: [t\n", "labs/x.yaml: not valid YAML at line 2"),
    ],
)  # fmt: skip
def test_a_bad_lab_file_fails_with_one_line_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    write_lab(tmp_path, "x", text)
    with pytest.raises(LabError) as info:
        load_labs(["x"], root=tmp_path)
    message = str(info.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected) and "\n" not in message, message


def test_a_grid_of_a_million_experiments_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    axes = "\n".join(f"  k{i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" for i in range(6))
    write_lab(tmp_path, "x", GOOD.replace("experiments:", f"grid:\n{axes}\nexperiments:"))
    start = time.perf_counter()
    with pytest.raises(LabError) as info:
        load_labs(["x"], root=tmp_path)
    assert time.perf_counter() - start < 10
    assert str(info.value).endswith(
        f"x.yaml: 1,000,001 experiments; a lab may have at most {MAX_EXPERIMENTS}"
    )


def test_a_yaml_alias_bomb_in_a_lab_file_is_refused_in_one_short_line(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    bomb = GOOD.replace("{classifier.epochs: 2}", f"{{classifier.hidden: {alias_bomb()}}}")
    write_lab(tmp_path, "x", bomb)
    start = time.perf_counter()
    with pytest.raises(LabError) as info:
        load_labs(["x"], root=tmp_path)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert (
        "classifier.hidden.0 = [1, 1, 1, 1, ...] is not allowed" in message and len(message) < 300
    )
    # in a grid, it makes an experiment's name: refused as one, shortened too
    bomb_grid = GOOD.replace(
        "experiments:", f"grid:\n  classifier.hidden: [{alias_bomb()}]\nexperiments:"
    )
    write_lab(tmp_path, "x", bomb_grid)
    with pytest.raises(LabError, match=r"experiment name 'x-\[\[1,1,1,1,___\],") as info:
        load_labs(["x"], root=tmp_path)
    assert len(str(info.value)) < 500


def test_an_unknown_lab_is_named_with_the_labs_there(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    write_lab(tmp_path, "x", GOOD)
    with pytest.raises(LabError, match=r"^no lab named lab9 \(labs: x\)$"):
        load_labs(["lab9"], root=tmp_path)


def test_grid_axes_name_and_combine_their_params() -> None:
    spec = yaml.safe_load("""
title: t
question: q
columns: [classifier/accuracy]
set: {classifier.epochs: 3}
grid:
  classifier.loss: [ce, mse]
  opt:
    slow: {classifier.optimizer.lr: 0.001}
    fast: {classifier.optimizer.lr: 0.1}
experiments:
  wide: {classifier.width: 2}
""")
    setups = expand("g", LabFile.model_validate(spec))
    assert [s.name for s in setups] == [
        "g-ce-slow",
        "g-ce-fast",
        "g-mse-slow",
        "g-mse-fast",
        "g-wide",
    ]
    assert setups[3].overrides == {"classifier.epochs": 3, "classifier.loss": "mse",
                                   "classifier.optimizer.lr": 0.1}  # fmt: skip
    assert setups[4].overrides == {"classifier.epochs": 3, "classifier.width": 2}


def test_set_options_write_values_dvc_reads_back() -> None:
    assert set_options({"classifier.hidden": [], "data.dataset": "fashion_mnist", "gan.ema": 0.0}) == [
        "-S", "classifier.hidden=[]", "-S", 'data.dataset="fashion_mnist"', "-S", "gan.ema=0.0"
    ]  # fmt: skip


TINY_LAB = """title: "A tiny lab: the tutorial's regression and a small classifier"
question: Which wins?
columns: [classifier/accuracy, classifier/detector/precision]
stages: [evaluate]
set:
  classifier.arch: mlp
  classifier.optimizer.name: sgd
  classifier.optimizer.lr: 0.01
  classifier.optimizer.momentum: 0.9
  classifier.scheduler: none
  classifier.augment.rotate: 0
  classifier.epochs: 2
experiments:
  regression:
    classifier.hidden: []
    classifier.head: regression
    classifier.loss: mse
  classes:
    classifier.hidden: [32]
"""


@pytest.mark.slow
def test_a_lab_runs_through_the_queue_into_exp_show_mlflow_and_its_table(
    tiny_repo: tuple[Path, dict[str, str]],
) -> None:
    path, env = tiny_repo
    write_lab(path, "tiny", TINY_LAB)
    git(path, "add", "labs/tiny.yaml")
    git(path, "commit", "-qm", "a tiny lab")
    result = subprocess.run(
        [sys.executable, "-m", "digitlab.labs", "run", "tiny"],
        cwd=path, env=env, capture_output=True, text=True, timeout=DVC_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "labs: tiny-regression: success" in result.stdout

    shown = json.loads(dvc(path, env, "exp", "show", "--json").stdout)
    experiments = {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
    }
    assert {"tiny-regression", "tiny-classes"} <= set(experiments)
    metrics = {
        name: experiments[name]["metrics"]["reports/classifier/metrics.json"]["data"]
        for name in ("tiny-regression", "tiny-classes")
    }
    # one linear neuron regressing the digit lands on the right integer for few images
    assert 0.05 < metrics["tiny-regression"]["accuracy"] < 0.5
    assert metrics["tiny-classes"]["accuracy"] > 0.8
    # the files DVC compares hold the headline figures only (details.json the rest)
    assert set(metrics["tiny-regression"]["detector"]) == {"accuracy", "precision", "recall", "f1"}

    # each experiment is its own MLflow pipeline run, its stages nested under it
    mlflow_client = client(path)
    for name in ("tiny-regression", "tiny-classes"):
        parents = mlflow_client.search_runs(
            [r.experiment_id for r in mlflow_client.search_experiments()],
            filter_string=f"tags.`digitlab.pipeline` = 'exp:{name}' and tags.`digitlab.kind` = 'pipeline'",
        )
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        parent = parents[0].info.run_id
        stages = mlflow_client.search_runs(
            [parents[0].info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        )
        assert {r.data.tags["dvc.stage"] for r in stages} == {"train_classifier", "evaluate"}

    table = (path / "reports" / "labs.md").read_text()
    baseline = git(path, "rev-parse", "--short=7", "HEAD").strip()
    assert "## A tiny lab: the tutorial's regression and a small classifier" in table
    rows = {
        line.split(" | ")[0].strip("| `"): line for line in table.splitlines() if "| `tiny-" in line
    }
    assert list(rows) == ["tiny-classes", "tiny-regression"]  # best first
    for name, row in rows.items():
        assert f"| {metrics[name]['accuracy']:.2%} |" in row and f"`{baseline}`" in row
        assert "/#/experiments/" in row  # a link to its pipeline run
    assert "Best: tiny-classes (accuracy" in table
    assert "| `lab6-mnist-ce-sgd` | not run |" in table  # every lab's table, run or not
    page = (path / "reports" / "labs.html").read_text()
    assert page.count("<tr><td><code>tiny-") == 2
    # each row shows its confusion heatmap, from its evaluate run's MLflow artifacts
    assert page.count("<img src='data:image/png;base64,") == 2
    assert "alt='tiny-classes: confusion heatmap'" in page
    # a figure of a stage the experiment did not run (restored, or before its lab's targets) is
    # the DVC output its commit holds: here the baseline's sample grid
    (rev,) = [exp["revs"][0]["rev"] for baseline in shown for exp in baseline.get("experiments") or []
              if exp["name"] == "tiny-classes"]  # fmt: skip
    script = f"from digitlab.labs.tables import figure_png; import sys; sys.stdout.buffer.write(figure_png('gan', 'tiny-classes', {rev!r}))"
    grid = subprocess.run([sys.executable, "-c", script], cwd=path, env=env, capture_output=True,
                          timeout=120)  # fmt: skip
    assert grid.stdout == (path / "reports" / "gan" / "samples.png").read_bytes(), grid.stderr

    # the GAN judge refuses a regression classifier with one line, before any work
    raw = yaml.safe_load((path / "params.yaml").read_text())
    raw["classifier"].update(hidden=[], head="regression", loss="mse")
    original = (path / "params.yaml").read_text()
    (path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        judged = subprocess.run(
            [sys.executable, "stages/evaluate_gan.py"],
            cwd=path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        (path / "params.yaml").write_text(original)
    assert judged.returncode == 1
    lines = judged.stderr.strip().splitlines()
    assert len(lines) == 1 and "classifier.head is regression" in lines[0], judged.stderr
