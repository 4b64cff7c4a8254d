"""DVC stage `evaluate_gan`: judge generated images with the trained classifier."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

from digitlab.checkpoints import check_dataset, load_classifier, load_generator
from digitlab.data import CLASS_NAMES, load_split
from digitlab.device import pick_device
from digitlab.files import write_json
from digitlab.inference import generate, judge, requested_digits
from digitlab.metrics import gan_quality
from digitlab.params import check_gan_params
from digitlab.plots import class_histogram_bars, samples_grid, save_grid
from digitlab.stopping import run_main
from digitlab.tracking import stage_run

REPORTS = Path("reports/gan")
CLASSIFIER, GENERATOR = "models/classifier.pt", "models/generator.pt"


def summary_lines(m: dict, conditional: bool) -> list[str]:
    """What the stage prints: the headline figures, then per digit with every digit."""
    lines = [
        f"decent {m['decent_rate']:.1%}, Fréchet {m['frechet']:.2f} ({m['frechet_ratio']:.1f}× "
        f"the real-vs-real floor {m['frechet_floor']:.2f}), diversity {m['diversity_ratio']:.2f}, "
        f"memorised {m['memorised']:.1%}, {m['digits_present']} digits present, classifier score "
        f"{m['classifier_score']:.2f} (real test images {m['classifier_score_real']:.2f})"
    ]
    if len(PARAMS.digits) > 1:
        by = "requested" if conditional else "predicted"
        lines.append(
            f"per {by} digit: worst decent {m['decent_rate_worst']:.1%}, median Fréchet "
            f"ratio {m['frechet_ratio_median']:.2f}"
        )
    return lines


def main() -> None:
    check_gan_params(PARAMS, judging=True)
    cfg, digits, dataset = PARAMS.gan_eval, PARAMS.digits, PARAMS.data.dataset
    classifier, architecture, saved = load_classifier(CLASSIFIER, PARAMS.classifier.architecture())
    generator, checkpoint = load_generator(GENERATOR, PARAMS.gan.conditional, PARAMS.digit)
    check_dataset(CLASSIFIER, saved, dataset)
    check_dataset(GENERATOR, checkpoint, dataset)
    real = {
        split: load_split("data/prepared", split).of_digits(digits) for split in ("test", "train")
    }
    requested = requested_digits(cfg.num_samples, digits) if PARAMS.gan.conditional else None
    logged = {"gan_eval": cfg.model_dump(), "digit": PARAMS.digit}
    with stage_run("evaluate_gan", PARAMS, logged, data_context="evaluation") as run:
        device = pick_device(PARAMS.device)
        samples = generate(generator, cfg.num_samples, PARAMS.seed, device, requested)
        judged = judge(classifier, architecture, samples, real, device)
        metrics, details = gan_quality(samples, requested, *judged, real, digits, cfg.threshold)
        write_json(REPORTS / "metrics.json", metrics)
        write_json(REPORTS / "details.json", details)
        save_grid(samples_grid(samples, requested, digits), REPORTS / "samples.png", nrow=10)
        histogram = REPORTS / "class_histogram.png"
        class_histogram_bars(details["predicted_digits"], CLASS_NAMES[dataset], histogram)
        run.log_metrics({**metrics, **details}, prefix="gan_eval")
        files = ("metrics.json", "details.json", "samples.png", "class_histogram.png")
        run.log_artifacts([REPORTS / name for name in files], "gan_eval")
        for line in summary_lines({**metrics, **details}, requested is not None):
            print(f"evaluate_gan: {line}")


if __name__ == "__main__":
    run_main(main)
