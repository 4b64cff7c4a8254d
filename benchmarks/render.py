"""The tables of docs/performance.md, written from reports/bench.json between
`<!-- bench:start -->` and `<!-- bench:end -->`, so the figures are kept in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PAGES = (Path("docs/performance.md"),)


CLASSIFIERS = {"default": "digitlab default", "fast_recipe": "digitlab fast recipe",
               "tuomaso": "tuomaso recipe", "examples": "pytorch/examples"}  # fmt: skip


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} s"


def _reached(results: dict[str, Any], name: str, key: str, metric: str, best: Any) -> str:
    """Seconds to a target, or how far the run got: 'not reached in N s (best …)'."""
    seconds = results.get(f"{name}_{key}")
    curve = results.get("curves", {}).get(name)
    if seconds is not None or not curve:
        return _seconds(seconds)
    value = best(point[metric] for point in curve)
    shown = f"{value:.2%}" if metric == "test_acc" else f"{value:.2f}"
    return f"not reached in {curve[-1]['seconds']:,.0f} s (best {shown})"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _gan_ratio(results: dict[str, Any]) -> str:
    """digitlab's time ÷ PyTorch-GAN's, or its bound when PyTorch-GAN stopped at its limit."""
    ours, theirs = (
        results.get("gan_seconds_to_frechet_2"),
        results.get("curves", {}).get("pytorch_gan"),
    )
    if results.get("gan_vs_pytorch_gan_ratio") is None and ours and theirs:
        return f"< {ours / theirs[-1]['seconds']:.2f}×"
    return _times(results.get("gan_vs_pytorch_gan_ratio"))


def render(results: dict[str, Any]) -> str:
    """The figures of one `make bench` run as Markdown tables."""
    lines = []
    if "default_seconds_to_99" in results:
        lines += ["| seconds of training until | " + " | ".join(CLASSIFIERS.values()) + " |",
                  "|---" * (len(CLASSIFIERS) + 1) + "|"]  # fmt: skip
        for target, label in (("99", "99.0%"), ("995", "99.5%")):
            cells = [_reached(results, name, f"seconds_to_{target}", "test_acc", max)
                     for name in CLASSIFIERS]  # fmt: skip
            lines.append(f"| {label} test accuracy | " + " | ".join(cells) + " |")
        lines += ["", f"Time to 99.0%, fast recipe ÷ tuomaso: "
                  f"{_times(results.get('fast_vs_tuomaso_ratio'))}; fast recipe ÷ pytorch/examples: "
                  f"{_times(results.get('fast_vs_examples_ratio'))}; default ÷ pytorch/examples: "
                  f"{_times(results.get('default_vs_examples_ratio'))}.", ""]  # fmt: skip
    if "gan_seconds_to_frechet_2" in results:
        lines += ["| seconds of training until | digitlab default GAN | PyTorch-GAN vanilla | ratio |",
                  "|---|---|---|---|",
                  "| Fréchet ratio < 2 (2,000 samples) | "
                  f"{_reached(results, 'gan', 'seconds_to_frechet_2', 'frechet_ratio', min)} | "
                  f"{_reached(results, 'pytorch_gan', 'seconds_to_frechet_2', 'frechet_ratio', min)} | "
                  f"{_gan_ratio(results)} |",
                  f"| 90% decent | {_seconds(results.get('gan_seconds_to_90_decent'))} | | |",
                  ""]  # fmt: skip
    rows = []
    revisit = results.get("revisit")
    if revisit:
        what = f"`{revisit['key']}` set to {revisit['value']!r} and back"
        ran = ", ".join(revisit["back_ran"]) or "no stage"
        rows.append(f"| `dvc repro` after {what} (ran {ran}) | {_seconds(revisit['back_s'])} "
                    f"({_seconds(revisit['away_s'])} going there) |")  # fmt: skip
    if results.get("noop_repro_s") is not None:
        rows.append(f"| `dvc repro` with nothing to do | {_seconds(results['noop_repro_s'])} |")
    if rows:
        lines += ["| pipeline | seconds |", "|---|---|", *rows]
    return "\n".join(lines).strip()


def update(path: Path, table: str) -> None:
    """Replace what stands between the markers in `path` with `table`."""
    text = path.read_text()
    block = f"{START}\n{table}\n{END}"
    new, count = re.subn(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text,
                         flags=re.S)  # fmt: skip
    if count != 1:
        raise SystemExit(f"{path}: expected one {START} … {END} block, found {count}")
    path.write_text(new)


def write_tables(results: dict[str, Any]) -> str:
    """Put the table of `results` into docs/performance.md; returns it."""
    table = render(results)
    for path in PAGES:
        update(path, table)
    return table


def main() -> None:
    print(write_tables(json.loads(Path("reports/bench.json").read_text())))


if __name__ == "__main__":
    main()
