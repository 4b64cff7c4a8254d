"""The benchmark's baselines (the labs' own loops) run on real MNIST and train their models."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from digitlab.bench import dataloader_epoch, notebook_gan_params, notebook_gan_seconds
from digitlab.models import MLP
from digitlab.params import parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_dataloader_epoch_trains_the_model(raw_mnist: Path) -> None:
    torch.manual_seed(0)
    model = MLP([32], "relu", 0.0)
    before = [p.clone() for p in model.parameters()]
    dataloader_epoch(model, raw_mnist, n_images=256, batch_size=64, seed=0)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_notebook_gan_loop_runs_the_notebook_networks(raw_mnist: Path) -> None:
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    cfg = notebook_gan_params(params)
    assert cfg.generator_config()["hidden"] == [32, 64, 128]
    assert cfg.optimizer_d.name == "sgd" and cfg.latent == "uniform"
    assert notebook_gan_seconds(cfg, raw_mnist, [3], steps=5, seed=0) > 0
