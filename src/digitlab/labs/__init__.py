"""The labs' own setups as data: every `labs/<lab>.yaml` is a small file of params overrides
(a grid, named experiments), validated like params.yaml before any work. The runner
(labs/queue.py) queues them as named DVC experiments; labs/tables.py answers each lab in a table.

    python -m digitlab.labs list              # the labs and their experiments
    python -m digitlab.labs run lab4 lab6     # queue, run (2 workers), wait, write the tables
    python -m digitlab.labs run --all
    python -m digitlab.labs report            # the tables again, from `dvc exp show`
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from digitlab.errors import DigitlabError
from digitlab.memory import check_networks
from digitlab.params import ParamsError, parse_params, read_yaml, shown

LABS_DIR = Path("labs")
NAME = re.compile(r"[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)*")
MAX_EXPERIMENTS = 100  # per lab: counted before the grid is expanded
Stage = Literal[
    "fetch", "prepare", "train_classifier", "evaluate", "train_gan", "evaluate_gan", "report"
]


def headline_columns() -> list[str]:
    """What a lab's table can show: every value of the files declared as DVC metrics, by its
    flat name (classifier/accuracy, classifier/detector/precision, gan/decent_rate …)."""
    from digitlab.metrics import HEADLINE

    return [f"{kind}/{name}" for kind, names in HEADLINE.items() for name in names]


class LabError(DigitlabError):
    """A lab file that cannot be read or holds a key or value that is not allowed."""


class LabFile(BaseModel):
    """labs/<lab>.yaml: what the lab asks, and the params of each of its experiments."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str
    question: str  # the lab's own question or target, answered by the table
    stages: list[Stage] = []  # `dvc exp run` targets (and what they need); [] = every stage
    columns: list[str] = Field(min_length=1)  # headline_columns()
    set: dict[str, Any] = {}  # params every experiment of the lab takes
    # every combination of the axes is one experiment: an axis is a list of values of one key,
    # or a mapping of labels to params; the values / labels name the experiment
    grid: dict[str, list[Any] | dict[str, dict[str, Any]]] = {}
    experiments: dict[str, dict[str, Any]] = {}  # more experiments: name suffix → params

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, columns: list[str]) -> list[str]:
        known = headline_columns()
        for column in columns:
            if column not in known:
                raise ValueError(f"{shown(column)} is not a headline metric ({', '.join(known)})")
        return columns

    def size(self) -> int:
        """How many experiments the file makes, counted without expanding the grid."""
        return math.prod(len(axis) for axis in self.grid.values()) * bool(self.grid) + len(
            self.experiments
        )


@dataclass(frozen=True)
class Setup:
    """One experiment of a lab: its name and the params it overrides (dotted keys)."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Lab:
    name: str
    path: Path
    spec: LabFile
    setups: list[Setup] = field(default_factory=list)


def _label(value: Any) -> str:
    """A grid value as part of an experiment name (shortened: a name is no place for a big
    value, which then fails the name check)."""
    return shown(value).strip("'").lower().replace(".", "_").replace(" ", "")


def expand(lab: str, spec: LabFile) -> list[Setup]:
    """The lab's experiments: each grid combination, then each named experiment."""
    axes = []
    for key, axis in spec.grid.items():
        if isinstance(axis, list):
            axes.append([(_label(v), {key: v}) for v in axis])
        else:
            axes.append(list(axis.items()))
    setups = []
    if axes:
        for combo in itertools.product(*axes):
            overrides = dict(spec.set)
            for _, chosen in combo:
                overrides.update(chosen)
            setups.append(Setup("-".join([lab, *(label for label, _ in combo)]), overrides))
    for suffix, chosen in spec.experiments.items():
        setups.append(Setup(f"{lab}-{suffix}", {**spec.set, **chosen}))
    return setups


def apply(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of a params.yaml mapping with dotted keys set; a key below a value that is not a
    section fails with one line (unknown keys are left for the params validation to name)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LabError(f"{source}: {key}: {'.'.join(parents[: i + 1])} is not a section")
        node[last] = value
    return out


def load_lab(path: Path, params_raw: dict[str, Any]) -> Lab:
    """Read and validate one lab file: its own keys, and every experiment's params through the
    same validation as params.yaml; the first problem is one line naming the file and key."""
    name = path.stem
    if not NAME.fullmatch(name):
        raise LabError(f"{path}: a lab's file name must be lowercase letters, digits, - or _")
    try:
        raw = read_yaml(path, "a lab file")
    except ParamsError as exc:
        raise LabError(str(exc)) from None
    if not isinstance(raw, dict):
        raise LabError(f"{path}: expected a mapping of keys (title, question, columns, …)")
    try:
        spec = LabFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()  # a misspelt key first: its "missing" twin follows from it
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(LabFile.model_fields)
        hint = f" (allowed: {allowed})" if err["type"] == "extra_forbidden" else ""
        message = err["msg"].removeprefix("Value error, ")[:300]
        raise LabError(f"{path}: {key}: {message}{hint}") from None
    if spec.size() > MAX_EXPERIMENTS:
        raise LabError(
            f"{path}: {spec.size():,} experiments; a lab may have at most {MAX_EXPERIMENTS}"
        )
    setups = expand(name, spec)
    if not setups:
        raise LabError(f"{path}: no experiments: give a grid or experiments")
    seen: set[str] = set()
    for setup in setups:
        if not NAME.fullmatch(setup.name):
            raise LabError(
                f"{path}: experiment name {setup.name!r}: use lowercase letters, digits, - or _"
            )
        if setup.name in seen:
            raise LabError(f"{path}: experiment {setup.name!r} is defined twice")
        seen.add(setup.name)
        source = f"{path} ({setup.name})"
        try:
            check_networks(
                parse_params(apply(params_raw, setup.overrides, source), source), source=source
            )
        except ParamsError as exc:
            raise LabError(str(exc)) from None
    return Lab(name, path, spec, setups)


def load_labs(names: list[str] | None = None, root: Path = Path()) -> list[Lab]:
    """The named labs (all of them without names) of the repo at `root`, every file validated
    before any work; labs that run every stage first (the GANs: the longest)."""
    try:
        params_raw = read_yaml(root / "params.yaml", "the params file")
    except ParamsError as exc:
        raise LabError(str(exc)) from None
    labs_dir = root / LABS_DIR
    available = sorted(p.stem for p in labs_dir.glob("*.yaml"))
    unknown = [n for n in names or [] if n not in available]
    if unknown:
        raise LabError(f"no lab named {', '.join(unknown)} (labs: {', '.join(available)})")
    labs = [load_lab(labs_dir / f"{n}.yaml", params_raw) for n in names or available]
    labs.sort(key=lambda lab: bool(lab.spec.stages))
    names_seen: dict[str, str] = {}
    for lab in labs:
        for setup in lab.setups:
            if setup.name in names_seen:
                raise LabError(
                    f"{lab.path}: experiment {setup.name!r} is also in {names_seen[setup.name]}"
                )
            names_seen[setup.name] = str(lab.path)
    return labs
