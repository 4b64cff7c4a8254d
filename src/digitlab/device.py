"""The device training and evaluation run on (params.yaml's `device`), made deterministic on
CUDA, and the record of it a run and a checkpoint keep."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# cuBLAS reuses workspace buffers in an order that changes its sums from run to run unless told
# to keep a fixed workspace; it reads this when CUDA starts (NVIDIA's cuBLAS reproducibility).
CUBLAS_WORKSPACE = ":4096:8"


def deterministic_cuda() -> None:
    """Same params, same GPU → the same weights: deterministic algorithms only (an operation
    with none raises, and the stage says so in one line), a fixed cuBLAS workspace, no cuDNN
    benchmarking (it picks algorithms by timing them)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def pick_device(setting: str = "auto") -> torch.device:
    """`cuda`, `cpu`, or `auto`: CUDA when present, else the CPU (memory.check_device refuses
    `cuda` without one before any work). On CUDA, deterministic_cuda() first."""
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    deterministic_cuda()
    return torch.device("cuda")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, str]:
    """What a run's results depend on beyond its params: the device and its name, torch's and
    CUDA's versions, the CPU threads (their count changes the CPU's sums)."""
    gpu = device.type == "cuda"
    return {
        "device": device.type,
        "name": str(torch.cuda.get_device_name(device)) if gpu else cpu_name(),
        "torch": str(torch.__version__),  # a str subclass weights_only loading refuses
        "cuda": str(torch.version.cuda or "none"),
        "threads": str(torch.get_num_threads()),
    }
