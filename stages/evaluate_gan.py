"""DVC stage `evaluate_gan`: judge generated images with the trained classifier."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow

from digitlab.data import CLASS_NAMES, Split, load_split
from digitlab.errors import DigitlabError, run_main
from digitlab.files import write_json
from digitlab.inference import generate, predict_logits, probabilities, requested_digits
from digitlab.metrics import flat_metrics, gan_quality
from digitlab.models import check_dataset, load_classifier, load_generator, pick_device
from digitlab.params import check_gan_dataset
from digitlab.plots import class_histogram_bars, class_rows, save_grid
from digitlab.tracking import stage_run

REPORTS = Path("reports/gan")


def main() -> None:
    params = PARAMS
    check_gan_dataset(params)
    cfg = params.gan_eval
    if params.classifier.head == "regression":
        raise DigitlabError(
            "evaluate_gan judges images by the classifier's ten probabilities, but "
            "classifier.head is regression (one value): set classifier.head: classes, or "
            "reproduce only the classifier (dvc repro evaluate)"
        )
    classifier, architecture, judge = load_classifier(
        "models/classifier.pt", params.classifier.architecture()
    )
    generator, checkpoint = load_generator("models/generator.pt", params.gan.conditional)
    check_dataset("models/classifier.pt", judge, params.data.dataset)
    check_dataset("models/generator.pt", checkpoint, params.data.dataset)
    if checkpoint["digit"] != params.digit:
        raise DigitlabError(
            f"models/generator.pt was trained for digit {checkpoint['digit']!r} but params.yaml has "
            f"digit {params.digit!r}: run `dvc repro train_gan`"
        )
    digits = params.digits
    real = {
        split: load_split("data/prepared", split).of_digits(digits) for split in ("test", "train")
    }
    conditional = generator.config.conditional
    requested = requested_digits(cfg.num_samples, digits) if conditional else None
    logged = {"gan_eval": cfg.model_dump(), "digit": params.digit}
    with stage_run("evaluate_gan", params, logged, data_context="evaluation"):
        device = pick_device()
        samples = generate(generator, cfg.num_samples, params.seed, device, requested)
        probs, real_probs = (probabilities(predict_logits(classifier, images, device), architecture.loss)
                             for images in (samples, real["test"].images))  # fmt: skip
        features = {name: predict_logits(classifier, images, device, features=True)
                    for name, images in (("samples", samples), ("test", real["test"].images),
                                         ("train", real["train"].images))}  # fmt: skip
        metrics = gan_quality(
            samples, requested, probs, real_probs, features, real, digits, cfg.threshold
        )
        write_json(REPORTS / "metrics.json", metrics)
        grid = class_rows(Split(samples, requested), 10, digits) if conditional else samples[:100]
        save_grid(grid, REPORTS / "samples.png", nrow=10)
        class_histogram_bars(
            metrics["predicted_digits"],
            CLASS_NAMES[params.data.dataset],
            REPORTS / "class_histogram.png",
        )
        mlflow.log_metrics(flat_metrics(metrics, "gan_eval"))
        for name in ("metrics.json", "samples.png", "class_histogram.png"):
            mlflow.log_artifact(str(REPORTS / name), "gan_eval")
        print(f"evaluate_gan: decent {metrics['decent_rate']:.1%}, Fréchet {metrics['frechet']:.2f} "
              f"({metrics['frechet_ratio']:.1f}× the real-vs-real floor {metrics['frechet_floor']:.2f}), "
              f"diversity {metrics['diversity_ratio']:.2f}, memorised {metrics['memorised']:.1%}, "
              f"{metrics['digits_present']} digits present, classifier score "
              f"{metrics['classifier_score']:.2f} (real test images {metrics['classifier_score_real']:.2f})")  # fmt: skip
        if len(digits) > 1:
            print(f"evaluate_gan: per {'requested' if conditional else 'predicted'} digit: worst decent "
                  f"{metrics['decent_rate_worst']:.1%}, median Fréchet ratio {metrics['frechet_ratio_median']:.2f}")  # fmt: skip


if __name__ == "__main__":
    run_main(main)
