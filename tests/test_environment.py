"""The environment is what was tested: pyproject.toml declares exactly the distributions that
src/ and stages/ import (plus the runtime tools used without an import), requirements.lock pins
them all with hashes, and the running environment holds the locked versions. Fast, no network."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
SCANNED = ("src", "stages")

# Declared in [project] dependencies but used without an import (pyproject.toml says why).
RUNTIME_TOOLS = {
    "dvc": "runs the pipeline (dvc repro, dvc.yaml)",
    "psutil": "MLflow's system metrics (log_system_metrics=True) read it",
}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(specs: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, specs)}


def runtime_requirements() -> dict[str, Requirement]:
    return requirements(project()["dependencies"])


def all_requirements() -> dict[str, Requirement]:
    reqs = runtime_requirements()
    for specs in project().get("optional-dependencies", {}).values():
        reqs |= requirements(specs)
    return reqs


def local_modules() -> set[str]:
    """First-party names: the packages under src/ and the scripts in stages/."""
    names = {p.name for p in (ROOT / "src").iterdir() if (p / "__init__.py").exists()}
    names |= {p.stem for p in (ROOT / "src").glob("*.py")}
    return names | {p.stem for p in (ROOT / "stages").glob("*.py")}


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> the files importing it (any depth: lazy imports too)."""
    skip = set(sys.stdlib_module_names) | local_modules() | {"__future__"}
    found: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in skip:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def lock_entries() -> list[str]:
    """The lock's requirement entries, continuation lines joined, comments dropped."""
    lines = re.sub(r"\\\n", " ", LOCK.read_text()).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def lock_pins() -> dict[str, str]:
    pins = {}
    for entry in lock_entries():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", entry)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_pyproject_declares_exactly_what_src_and_stages_import() -> None:
    declared = set(runtime_requirements())
    tools = {canonicalize_name(name) for name in RUNTIME_TOOLS}
    assert tools <= declared, f"runtime tools not declared: {sorted(tools - declared)}"

    providers = packages_distributions()
    used: set[str] = set()
    missing = []
    for module, files in sorted(imported_modules().items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        # mlflow's module comes from mlflow, mlflow-skinny and mlflow-tracing: one will do.
        if not dists & declared:
            who = ", ".join(sorted(dists)) or "no installed distribution"
            missing.append(f"{module} ({who}; imported by {', '.join(sorted(files))})")
        used |= dists & declared
    unused = sorted(declared - tools - used)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert not unused, f"declared in pyproject.toml but never imported by src/ or stages/: {unused}"


def test_lock_pins_everything_with_hashes() -> None:
    bad = [
        e.split()[0]
        for e in lock_entries()
        if not e.startswith("-") and (not re.match(r"[A-Za-z0-9._-]+==", e) or "--hash=" not in e)
    ]
    assert not bad, f"lock entries not pinned with == and --hash: {bad}"
    pins = lock_pins()
    assert len(pins) > 50, "requirements.lock holds too few pins; regenerate it with `make lock`"
    absent = sorted(set(all_requirements()) - set(pins))
    assert not absent, f"declared in pyproject.toml but not in requirements.lock: {absent}"
    stale = [
        f"{name}=={pins[name]} vs {req}"
        for name, req in sorted(all_requirements().items())
        if not req.specifier.contains(pins[name], prereleases=True)
    ]
    assert not stale, f"requirements.lock is stale (`make lock`): {stale}"


def test_installed_versions_are_the_locked_ones() -> None:
    wrong = []
    for name, pinned in sorted(lock_pins().items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != pinned:
            wrong.append(f"{name}: locked {pinned}, installed {installed}")
    assert not wrong, f"the environment is not the lock (`make setup`): {wrong}"
