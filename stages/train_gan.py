"""DVC stage `train_gan`: train a generator against a discriminator on the images of `digit`."""

from digitlab.params import stage_params

PARAMS = stage_params()  # first: a bad params.yaml fails at once, before the slow imports

from pathlib import Path

import mlflow
import pandas as pd
import torch

from digitlab.data import load_split
from digitlab.errors import run_main
from digitlab.files import atomic_dir, atomic_path, write_text
from digitlab.gan import fit_gan
from digitlab.inference import requested_digits, sample_latent
from digitlab.models import DigitFirstGenerator, pick_device, save_checkpoint
from digitlab.params import check_gan_dataset
from digitlab.plots import gan_curves, save_grid
from digitlab.tracking import stage_run

REPORTS = Path("reports/gan")
GENERATOR = "digitlab-generator"  # its name in MLflow's model registry


def main() -> None:
    params = PARAMS
    check_gan_dataset(params)
    cfg = params.gan
    real = load_split("data/prepared", "train").of_digits(params.digits)
    logged = {"gan": cfg.model_dump(), "gan.generator.layers": cfg.generator_config().hidden,
              "digit": params.digit, "seed": params.seed, "n_real_images": len(real)}  # fmt: skip
    with stage_run("train_gan", params, logged, "training", system_metrics=True) as run:
        device = pick_device()
        print(
            f"train_gan: {len(real):,} real images of digit {params.digit}, {cfg.schedule} schedule, on {device}"
        )

        def log_row(row: dict[str, float]) -> None:
            step = int(row["step"])
            mlflow.log_metrics({f"gan/{k}": v for k, v in row.items() if k != "step"}, step=step)
            print(f"G step {step:>6}: D loss {row['d_loss']:.3f}  G loss {row['g_loss']:.3f}  "
                  f"D(x) {row['d_real']:.2f}  D(G(z)) {row['d_fake']:.2f}  {row['seconds']:.0f} s")  # fmt: skip

        result = fit_gan(cfg, real.images, params.seed, device, real.labels, on_log=log_row)
        history = pd.DataFrame(result.history)
        extra = {
            "digit": params.digit,
            "dataset": params.data.dataset,
            "steps": int(history["step"].iloc[-1]),
        }
        with atomic_path("models/generator.pt") as tmp:
            save_checkpoint(
                tmp, "generator", cfg.generator_config(), result.generator, ema=cfg.ema, **extra
            )
        with atomic_path("models/discriminator.pt") as tmp:
            save_checkpoint(tmp, "discriminator", cfg.discriminator, result.discriminator,
                            conditional=cfg.conditional, **extra)  # fmt: skip
        write_text(REPORTS / "history.csv", history.to_csv(index=False))
        gan_curves(history, REPORTS / "losses.png")
        with atomic_dir(REPORTS / "progress") as progress:
            for step, images in result.snapshots:
                save_grid(images, progress / f"step_{step:06d}.png", nrow=10)
        mlflow.log_metrics({"gan/diversity_ratio": result.diversity_ratio, "gan/collapsed": float(result.collapsed),
                            "gan/train_seconds": float(history["seconds"].iloc[-1])})  # fmt: skip
        mlflow.log_artifacts(str(REPORTS / "progress"), "progress")
        mlflow.log_artifact(str(REPORTS / "losses.png"), "gan")
        latent = torch.Generator().manual_seed(params.seed)
        example = sample_latent(5, cfg.latent_size, cfg.latent, latent, torch.device("cpu"))
        model = result.generator
        if cfg.conditional:  # MLflow's flavour takes one tensor: the digit, then the latent vector
            model = DigitFirstGenerator(model)
            example = torch.cat([requested_digits(5, params.digits)[:, None].float(), example], 1)
        kind = "conditional" if cfg.conditional else "unconditional"
        run.log_model(model, GENERATOR, example, alias=f"latest-{params.data.dataset}-{params.digit}",
                      tags={"dataset": params.data.dataset, "digit": str(params.digit), "kind": kind})  # fmt: skip
        state = "COLLAPSED (see the warning above)" if result.collapsed else "not collapsed"
        print(
            f"train_gan: fixed-noise diversity {result.diversity_ratio:.0%} of the real images'; {state}"
        )


if __name__ == "__main__":
    run_main(main)
