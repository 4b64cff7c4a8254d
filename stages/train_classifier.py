"""DVC stage `train_classifier`: train the classifier, keep its best-on-validation weights."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import pandas as pd
import torch

from digitlab.checkpoints import save_checkpoint
from digitlab.data import load_split
from digitlab.device import device_info, pick_device
from digitlab.files import write_text
from digitlab.models import build_classifier, n_parameters
from digitlab.params import input_shape
from digitlab.plots import training_curves
from digitlab.stopping import run_main
from digitlab.tracking import StageRun, stage_run
from digitlab.train import fit_classifier

PREPARED = Path("data/prepared")
MODEL = Path("models/classifier.pt")
REPORTS = Path("reports/classifier")
CLASSIFIER = "digitlab-classifier"  # its name in MLflow's model registry


def log_epoch(run: StageRun, row: dict[str, float]) -> None:
    """One epoch's figures to MLflow and the terminal."""
    metrics = {
        k.replace("_", "/", 1): row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")
    }
    metrics |= {"train/lr": row["lr"], "train/epoch_seconds": row["seconds"]}
    run.log_metrics(metrics, step=int(row["epoch"]))
    print(
        f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | {row['seconds']:.1f} s"
    )


def main() -> None:
    cfg, dataset = PARAMS.classifier, PARAMS.data.dataset
    train, val = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    logged = {"classifier": cfg.model_dump(), "seed": PARAMS.seed}
    with stage_run("train_classifier", PARAMS, logged, "training", system_metrics=True) as run:
        torch.manual_seed(PARAMS.seed)
        model = build_classifier(cfg.architecture(), input_shape(dataset))
        device, size = pick_device(PARAMS.device), n_parameters(model)
        hardware = device_info(device)
        run.log_params({"n_parameters": size, "hardware": hardware})
        print(
            f"train_classifier: {cfg.arch}, {size:,} parameters, {cfg.loss} loss, on {hardware['name']}"
        )
        result = fit_classifier(
            model, train, val, cfg, PARAMS.seed, device, on_epoch=lambda row: log_epoch(run, row)
        )
        model.load_state_dict(result.state_dict)
        history = pd.DataFrame(result.history)
        extra = {"dataset": dataset, "best_epoch": result.best_epoch, "n_parameters": size}
        extra["hardware"] = hardware
        save_checkpoint(MODEL, "classifier", cfg.architecture(), model, **extra)
        write_text(REPORTS / "history.csv", history.to_csv(index=False))
        title = f"{cfg.arch} ({size:,} parameters), best epoch {result.best_epoch}"
        training_curves(history, REPORTS / "curves.png", title)
        best = {
            "epoch": result.best_epoch,
            "val_acc": result.history[result.best_epoch - 1]["val_acc"],
        }
        run.log_metrics({"best": best, "train/seconds": history["seconds"].sum()})
        tags = {"dataset": dataset, "arch": cfg.arch}
        config = cfg.architecture().model_dump()
        run.log_model(model, CLASSIFIER, val.images[:5], f"latest-{dataset}", tags, config=config)
        run.log_artifacts([REPORTS / "history.csv", REPORTS / "curves.png"], "classifier")
        print(f"train_classifier: best epoch {result.best_epoch}, val acc {best['val_acc']:.4f}")


if __name__ == "__main__":
    run_main(main)
