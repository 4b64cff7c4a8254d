"""DVC stage `evaluate`: test-set metrics for the chosen digit, the confusion breakdown, figures."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

from digitlab.checkpoints import check_dataset, load_classifier
from digitlab.data import CLASS_NAMES, load_split
from digitlab.device import pick_device
from digitlab.files import atomic_dir, write_json, write_text
from digitlab.inference import predict_probabilities
from digitlab.metrics import (
    classifier_report,
    confusion_frame,
    most_confident_mistakes,
    predictions_frame,
)
from digitlab.plots import breakdown_bars, confusion_heatmap, mistakes_grid
from digitlab.stopping import run_main
from digitlab.tracking import stage_run

MODEL = Path("models/classifier.pt")
REPORTS = Path("reports/classifier")


def main() -> None:
    model, architecture, checkpoint = load_classifier(MODEL, PARAMS.classifier.architecture())
    check_dataset(MODEL, checkpoint, PARAMS.data.dataset)
    test, names = load_split("data/prepared", "test"), CLASS_NAMES[PARAMS.data.dataset]
    logged = {"digit": PARAMS.digit, "classifier": architecture.model_dump()}
    logged["n_parameters"] = checkpoint["n_parameters"]
    with stage_run("evaluate", PARAMS, logged, data_context="testing") as run:
        probs = predict_probabilities(model, architecture, test.images, pick_device(PARAMS.device))
        metrics, details, confusion, table = classifier_report(test.labels, probs, PARAMS.digits)
        write_json(REPORTS / "metrics.json", metrics)
        write_json(REPORTS / "details.json", details)
        predictions = predictions_frame(probs, test.labels, PARAMS.digit)
        write_text(REPORTS / "predictions.csv", predictions.to_csv(index=False))
        write_text(REPORTS / "breakdown.csv", table.to_csv(index=False))
        write_text(REPORTS / "confusion.csv", confusion_frame(confusion).to_csv())
        worst = most_confident_mistakes(probs, test.labels)
        with atomic_dir(REPORTS / "figures") as figures:
            confusion_heatmap(confusion, figures / "confusion.png", names)
            breakdown_bars(table, figures / "breakdown.png")
            mistakes_grid(
                test.images[worst],
                test.labels[worst],
                probs[worst],
                names,
                figures / "mistakes.png",
            )
        run.log_metrics({**metrics, **details}, prefix="test")
        files = ["figures", "metrics.json", "details.json", "breakdown.csv", "confusion.csv"]
        run.log_artifacts([REPORTS / name for name in files], "classifier")
        d = metrics["detector"]
        print(
            f"evaluate: accuracy {metrics['accuracy']:.4f}; detector for {PARAMS.digit}: accuracy "
            f"{d['accuracy']:.4f}, precision {d['precision']:.4f}, recall {d['recall']:.4f}"
        )


if __name__ == "__main__":
    run_main(main)
