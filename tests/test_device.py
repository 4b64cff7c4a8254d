"""Where the stages run (params.yaml's `device`): the choice, `cuda` refused where there is none,
the deterministic settings of CUDA, the record of the hardware; and, marked `gpu` (skipped with
the reason where torch sees no CUDA device), every device-dependent path on a real GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from digitlab.checkpoints import load_classifier, save_checkpoint
from digitlab.data import Split, load_split
from digitlab.device import CUBLAS_WORKSPACE, device_info, pick_device
from digitlab.gan import fit_gan
from digitlab.inference import generate, predict_logits, sample_latent
from digitlab.memory import check_device
from digitlab.models import build_classifier
from digitlab.params import ParamsError
from digitlab.train import fit_classifier, random_affine
from helpers import ROOT, repo_params

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_the_setting_picks_the_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_where_there_is_none_is_refused_in_one_line_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"^params.yaml: device = 'cuda' is not allowed: torch "):
        check_device(repo_params(device="cuda"))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "stages/train_classifier.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert time.perf_counter() - start < 30  # measured: about 4 s
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("digitlab: error: params.yaml: device = 'cuda' is not allowed: torch ")
    assert line.endswith("sees no CUDA device here; set device: auto (the CPU here) or cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no run, no outputs


def test_cuda_is_made_deterministic_before_it_starts() -> None:
    """What pick_device does before the first CUDA call (checked in a fresh process: the
    settings are process-wide)."""
    script = (
        "import os, torch\n"
        "from digitlab.device import deterministic_cuda\n"
        "deterministic_cuda()\n"
        "print(torch.are_deterministic_algorithms_enabled(), os.environ['CUBLAS_WORKSPACE_CONFIG'],"
        " torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    assert done.stdout.split() == ["True", CUBLAS_WORKSPACE, "False", "True"]


def test_the_hardware_is_recorded_and_loads_with_weights_only(tmp_path: Path) -> None:
    info = device_info(CPU)
    assert (
        info["device"] == "cpu" and info["name"] and info["threads"] == str(torch.get_num_threads())
    )
    assert info["torch"] == torch.__version__ and all(type(v) is str for v in info.values())
    arch = repo_params(**{"classifier.arch": "mlp"}).classifier.architecture()
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, "classifier", arch, build_classifier(arch), hardware=info)
    assert load_classifier(path)[2]["hardware"] == info


# ---------------------------------------------------------------- on a GPU


@pytest.fixture(scope="module")
def few(prepared: tuple[Path, dict]) -> dict[str, Split]:
    out, _ = prepared
    splits = {name: load_split(out, name) for name in ("train", "val", "test")}
    return {
        name: Split(s.images[:2048].clone(), s.labels[:2048].clone()) for name, s in splits.items()
    }


@pytest.mark.gpu
def test_the_classifier_trains_on_cuda_identically_twice(few: dict[str, Split]) -> None:
    pick_device("cuda")  # deterministic settings
    cfg = repo_params(**{"classifier.epochs": 2}).classifier  # fastcnn, augmented, one-cycle
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier(cfg.architecture())
        result = fit_classifier(model, few["train"], few["val"], cfg, 0, CUDA)
        states.append(result.state_dict)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert all(v.device == CPU for v in states[0].values())  # the best weights, off the device
    assert result.history[-1]["val_acc"] > 0.5


@pytest.mark.gpu
@pytest.mark.parametrize("conditional", [False, True])
def test_the_gan_trains_on_cuda_identically_twice(few: dict[str, Split], conditional: bool) -> None:
    pick_device("cuda")
    cfg = repo_params(**{"gan.epochs": 2, "gan.conditional": conditional}).gan
    runs = [fit_gan(cfg, few["train"].images, 0, CUDA, few["train"].labels) for _ in range(2)]
    assert [r["g_loss"] for r in runs[0].history] == [r["g_loss"] for r in runs[1].history]
    a, b = (r.generator.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    labels = torch.arange(10).repeat(5) if conditional else None
    images = generate(runs[0].generator, 50, 0, CUDA, labels)
    assert images.device == CPU and images.shape == (50, 1, 28, 28)


@pytest.mark.gpu
def test_predictions_and_random_draws_on_cuda(few: dict[str, Split]) -> None:
    pick_device("cuda")
    arch = repo_params().classifier.architecture()
    torch.manual_seed(0)
    model = build_classifier(arch).eval()
    on_cpu = predict_logits(model, few["test"].images, CPU)
    on_gpu = predict_logits(model.to(CUDA), few["test"].images, CUDA)
    assert on_gpu.device == CPU and torch.allclose(on_cpu, on_gpu, atol=1e-4)
    rng = torch.Generator(device=CUDA).manual_seed(0)
    assert sample_latent(4, 100, "normal", rng, CUDA).device.type == "cuda"
    moved = random_affine(few["train"].images[:64].to(CUDA), repo_params().classifier.augment, rng)
    assert moved.device.type == "cuda" and moved.shape == (64, 1, 28, 28)
