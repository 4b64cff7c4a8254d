"""DVC stage `evaluate`: test-set metrics for the chosen digit, the confusion breakdown, figures."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow
import pandas as pd

from digitlab.data import CLASS_NAMES, load_split
from digitlab.errors import run_main
from digitlab.files import atomic_dir, write_json, write_text
from digitlab.inference import predict_logits, probabilities
from digitlab.metrics import classifier_report, mlflow_metrics
from digitlab.models import check_dataset, load_classifier, pick_device
from digitlab.plots import breakdown_bars, confusion_heatmap, labelled_grid
from digitlab.tracking import stage_run

MODEL = Path("models/classifier.pt")
REPORTS = Path("reports/classifier")
N_MISTAKES = 32


def main() -> None:
    params = PARAMS
    model, architecture, checkpoint = load_classifier(MODEL, params.classifier.architecture())
    check_dataset(MODEL, checkpoint, params.data.dataset)
    test = load_split("data/prepared", "test")
    names = CLASS_NAMES[params.data.dataset]
    logged = {
        "digit": params.digit,
        "classifier": architecture.model_dump(),
        "n_parameters": checkpoint["n_parameters"],
    }
    with stage_run("evaluate", params, logged, data_context="testing"):
        probs = probabilities(predict_logits(model, test.images, pick_device()), architecture.loss)
        metrics, confusion, table = classifier_report(test.labels, probs, params.digits)
        predicted = probs.argmax(1)
        # score: the probability of the chosen digit (of the predicted one with digit: all)
        score = probs[:, params.digit] if params.digit != "all" else probs.max(1).values
        predictions = pd.DataFrame({"index": range(len(test)), "true": test.labels.numpy(),
                                    "predicted": predicted.numpy(), "score": score.numpy().round(6)})  # fmt: skip
        write_json(REPORTS / "metrics.json", metrics)
        write_text(REPORTS / "predictions.csv", predictions.to_csv(index=False))
        write_text(REPORTS / "breakdown.csv", table.to_csv(index=False))
        matrix = pd.DataFrame(
            confusion.numpy(), index=pd.Index(range(10), name="true"), columns=range(10)
        )
        write_text(REPORTS / "confusion.csv", matrix.to_csv())

        wrong = (predicted != test.labels).nonzero().squeeze(1)
        worst = wrong[probs[wrong, predicted[wrong]].argsort(descending=True)[:N_MISTAKES]]
        captions = [
            f"{names[test.labels[i]]} → {names[predicted[i]]}\np={probs[i, predicted[i]]:.2f}"
            for i in worst
        ]
        with atomic_dir(REPORTS / "figures") as figures:
            confusion_heatmap(confusion, figures / "confusion.png", names)
            breakdown_bars(table, figures / "breakdown.png")
            labelled_grid(test.images[worst], captions, figures / "mistakes.png",
                          f"The {len(worst)} most confident mistakes (true → predicted)")  # fmt: skip
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.log_artifacts(str(REPORTS / "figures"), "figures")
        for name in ("metrics.json", "breakdown.csv", "confusion.csv"):
            mlflow.log_artifact(str(REPORTS / name), "classifier")
        detector = metrics["detector"]
        line = f"accuracy {metrics['accuracy']:.4f}"
        if params.digit != "all":
            line += (f"; detector for {params.digit}: accuracy {detector['accuracy']:.4f}, precision "
                     f"{detector['precision']:.4f}, recall {detector['recall']:.4f}")  # fmt: skip
        print(f"evaluate: {line}")


if __name__ == "__main__":
    run_main(main)
