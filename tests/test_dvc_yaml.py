"""dvc.yaml is exact and keeps DVC's run-cache on: each stage's deps are the code it really
runs, evaluation stages run no training code, no output turns the run-cache off."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ALL_STAGES, ROOT

# Modules that shape messages, refusals and MLflow records, never an output: not stage deps.
NOT_DEPS = {"errors", "memory", "serving", "stopping", "store", "tracking"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """The digitlab modules a file imports anywhere (in functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "digitlab":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("digitlab."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("digitlab.")}
    return names


def code_closure(script: Path) -> set[str]:
    """The src/digitlab modules a stage script runs, following imports, minus NOT_DEPS."""
    seen: set[str] = set()
    todo = [script]
    while todo:
        for name in imported_modules(todo.pop()) - NOT_DEPS - seen:
            seen.add(name)
            todo.append(ROOT / "src" / "digitlab" / f"{name}.py")
    return {f"src/digitlab/{name}.py" for name in seen}


def test_stage_deps_are_exactly_the_code_they_run() -> None:
    assert set(STAGES) == ALL_STAGES
    for name, stage in STAGES.items():
        script = f"stages/{name}.py"
        assert stage["cmd"] == f"python {script}"
        code = {d for d in stage["deps"] if d.endswith(".py")}
        assert code == {script} | code_closure(ROOT / script), name


IMPORTED = """
import json, runpy, sys
runpy.run_path(sys.argv[1], run_name="imported")  # its imports, not its main()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("digitlab"))))
"""


@pytest.mark.parametrize("stage", ["evaluate", "evaluate_gan"])
def test_evaluation_stages_import_no_training_code(stage: str) -> None:
    """What `python stages/<stage>.py` really imports: inference, never train.py or optim.py
    (so changing the optimizer or a training loop reruns only training stages)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED, f"stages/{stage}.py"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    modules = set(json.loads(out))
    assert "digitlab.inference" in modules
    assert not {"digitlab.train", "digitlab.optim", "digitlab.gan"} & modules
    deps = {d for d in STAGES[stage]["deps"] if d.startswith("src/")}
    assert not {"src/digitlab/train.py", "src/digitlab/optim.py", "src/digitlab/gan.py"} & deps


def test_no_output_turns_the_run_cache_off() -> None:
    """DVC saves and restores a stage's run only when none of its outputs is `persist`; it
    keeps a copy of the uncached ones (the headline metrics files, which Git holds) too."""
    for name, stage in STAGES.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                options = next(iter(out.values())) if isinstance(out, dict) else {}
                assert not options.get("persist"), (name, out)
                assert options.get("cache", True) or kind == "metrics", (name, out)
