"""digitlab is stock PyTorch: no private torch API, no re-implemented layer or optimizer."""

from __future__ import annotations

import ast
import re

import pytest
import torch

from digitlab.optim import make_optimizer
from helpers import ROOT, repo_params

PRIVATE = re.compile(r"torch\._(?!_)|torch\.utils\._")  # torch.__version__ is public
STOCK = {"Linear", "Dropout", "Adam", "SGD", "Optimizer"}


def test_src_uses_no_private_torch_api() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert hits == []


def test_src_subclasses_no_stock_layer_or_optimizer() -> None:
    subclasses = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                subclasses += [f"{path.name}: {node.name}({b})" for b in bases & STOCK]
    assert subclasses == []


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_one_optimizer_setting_builds_torchs_fused_optimizers(name: str) -> None:
    params = repo_params(**{"gan.optimizer_d.name": name, "gan.optimizer_d.weight_decay": 0.01})
    for settings in (params.classifier.optimizer, params.gan.optimizer_d):
        assert type(settings) is type(params.gan.optimizer_g)  # one settings type for all three
    optimizer = make_optimizer(params.gan.optimizer_d, torch.nn.Linear(3, 2).parameters())
    group = optimizer.param_groups[0]
    assert type(optimizer) is (torch.optim.Adam if name == "adam" else torch.optim.SGD)
    assert group["fused"] is True and group["weight_decay"] == 0.01
    assert group["lr"] == params.gan.optimizer_d.lr
    if name == "adam":
        assert group["betas"] == tuple(params.gan.optimizer_d.betas)
    else:
        assert group["momentum"] == params.gan.optimizer_d.momentum
