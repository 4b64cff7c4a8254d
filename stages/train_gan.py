"""DVC stage `train_gan`: train a generator against a discriminator on the images of `digit`."""

from digitlab.checks import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import pandas as pd

from digitlab.checkpoints import save_gan
from digitlab.data import load_split
from digitlab.device import device_info, pick_device
from digitlab.files import write_text
from digitlab.gan import fit_gan
from digitlab.params import check_gan_params
from digitlab.plots import gan_curves, save_snapshots
from digitlab.stopping import run_main
from digitlab.tracking import StageRun, stage_run

REPORTS = Path("reports/gan")
GENERATOR = "digitlab-generator"  # its name in MLflow's model registry


def log_row(run: StageRun, row: dict[str, float]) -> None:
    """One log point's figures to MLflow and the terminal."""
    run.log_metrics({k: v for k, v in row.items() if k != "step"}, "gan", step=int(row["step"]))
    print(
        f"G step {int(row['step']):>6}: D loss {row['d_loss']:.3f}  G loss {row['g_loss']:.3f}  "
        f"D(x) {row['d_real']:.2f}  D(G(z)) {row['d_fake']:.2f}  {row['seconds']:.0f} s"
    )


def main() -> None:
    check_gan_params(PARAMS)
    cfg, digit = PARAMS.gan, PARAMS.digit
    real = load_split("data/prepared", "train").of_digits(PARAMS.digits)
    logged = {"gan": cfg.model_dump(), "gan.generator.layers": cfg.generator_config().hidden}
    logged |= {"digit": digit, "seed": PARAMS.seed, "n_real_images": len(real)}
    with stage_run("train_gan", PARAMS, logged, "training", system_metrics=True) as run:
        device = pick_device(PARAMS.device)
        hardware = device_info(device)
        run.log_params({"hardware": hardware})
        print(
            f"train_gan: {len(real):,} images of digit {digit}, {cfg.schedule} schedule, on {hardware['name']}"
        )
        result = fit_gan(
            cfg, real.images, PARAMS.seed, device, real.labels, lambda row: log_row(run, row)
        )
        history = pd.DataFrame(result.history)
        steps = int(history["step"].iloc[-1])
        extra = {
            "digit": digit,
            "dataset": PARAMS.data.dataset,
            "steps": steps,
            "hardware": hardware,
        }
        save_gan(cfg, result.generator, result.discriminator, Path("models"), **extra)
        write_text(REPORTS / "history.csv", history.to_csv(index=False))
        gan_curves(history, REPORTS / "losses.png")
        save_snapshots(result.snapshots, REPORTS / "progress")
        seconds = float(history["seconds"].iloc[-1])
        summary = {"diversity_ratio": result.diversity_ratio, "train_seconds": seconds}
        run.log_metrics({**summary, "collapsed": float(result.collapsed)}, "gan")
        run.log_artifacts([REPORTS / "progress", REPORTS / "losses.png"], "gan")
        run.log_generator(result.generator, GENERATOR, PARAMS)
        state = "COLLAPSED (see the warning above)" if result.collapsed else "not collapsed"
        print(
            f"train_gan: fixed-noise diversity {result.diversity_ratio:.0%} of the real images'; {state}"
        )


if __name__ == "__main__":
    run_main(main)
