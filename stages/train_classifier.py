"""DVC stage `train_classifier`: train the classifier, keep its best-on-validation weights."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow
import pandas as pd
import torch

from digitlab.data import load_split
from digitlab.errors import run_main
from digitlab.files import atomic_path, write_text
from digitlab.models import build_classifier, n_parameters, pick_device, save_checkpoint
from digitlab.params import input_shape
from digitlab.plots import training_curves
from digitlab.tracking import stage_run
from digitlab.train import fit_classifier

PREPARED = Path("data/prepared")
MODEL = Path("models/classifier.pt")
REPORTS = Path("reports/classifier")
CLASSIFIER = "digitlab-classifier"  # its name in MLflow's model registry


def main() -> None:
    params = PARAMS
    cfg = params.classifier
    train, val = load_split(PREPARED, "train"), load_split(PREPARED, "val")
    logged = {"classifier": cfg.model_dump(), "seed": params.seed}
    with stage_run("train_classifier", params, logged, "training", system_metrics=True) as run:
        torch.manual_seed(params.seed)
        model = build_classifier(cfg.architecture(), input_shape(params.data.dataset))
        device = pick_device()
        size = n_parameters(model)
        mlflow.log_param("n_parameters", size)
        print(f"train_classifier: {cfg.arch}, {size:,} parameters, {cfg.loss} loss, on {device}")

        def log_epoch(row: dict[str, float]) -> None:
            names = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss",
                     "val_acc": "val/acc", "lr": "train/lr", "seconds": "train/epoch_seconds"}  # fmt: skip
            mlflow.log_metrics(
                {names[k]: v for k, v in row.items() if k in names}, step=int(row["epoch"])
            )
            print(f"epoch {row['epoch']:>3}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
                  f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | {row['seconds']:.1f} s")  # fmt: skip

        result = fit_classifier(model, train, val, cfg, params.seed, device, log_epoch)
        model.load_state_dict(result.state_dict)
        history = pd.DataFrame(result.history)
        best = history.iloc[result.best_epoch - 1]
        with atomic_path(MODEL) as tmp:
            save_checkpoint(tmp, "classifier", cfg.architecture(), model, dataset=params.data.dataset,
                            best_epoch=result.best_epoch, n_parameters=size)  # fmt: skip
        write_text(REPORTS / "history.csv", history.to_csv(index=False))
        title = f"{cfg.arch} ({size:,} parameters), best epoch {result.best_epoch}"
        training_curves(history, REPORTS / "curves.png", title)
        mlflow.log_metrics({"best/epoch": result.best_epoch, "best/val_acc": best["val_acc"],
                            "train/seconds": history["seconds"].sum()})  # fmt: skip
        dataset = params.data.dataset
        run.log_model(model, CLASSIFIER, example=val.images[:5], alias=f"latest-{dataset}",
                      tags={"dataset": dataset, "arch": cfg.arch})  # fmt: skip
        mlflow.log_artifact(str(REPORTS / "history.csv"), "classifier")
        mlflow.log_artifact(str(REPORTS / "curves.png"), "classifier")
        print(f"train_classifier: best epoch {result.best_epoch}, val acc {best['val_acc']:.4f}")


if __name__ == "__main__":
    run_main(main)
