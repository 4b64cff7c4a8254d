"""The tables of docs/performance.md, written from reports/bench.json between
`<!-- bench:start -->` and `<!-- bench:end -->`, so the figures are kept in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PAGES = (Path("docs/performance.md"),)


COMPARISONS = {
    "fast_vs_tuomaso": ("99.0% test accuracy", "digitlab fast recipe", "tuomaso recipe"),
    "default_vs_examples": ("99.0% test accuracy", "digitlab default", "pytorch/examples"),
    "gan_vs_pytorch_gan": ("Fréchet ratio < 2", "digitlab default GAN", "PyTorch-GAN vanilla"),
}


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} s"


def _runs(seconds: list[float | None], stopped: list[float | None]) -> str:
    """Each run's seconds, 'a / b / c s'; a run that did not get there as 'not reached in N s'
    (N: the seconds it trained before it stopped)."""
    if all(s is not None for s in seconds):
        return " / ".join(f"{s:,.1f}" for s in seconds) + " s"
    return " / ".join(
        f"{s:,.1f} s" if s is not None else f"not reached in {cap or 0:,.0f} s"
        for s, cap in zip(seconds, stopped, strict=True)
    )


def _ratio(comparison: dict[str, Any]) -> str:
    """The median ratio and its range; where theirs did not get there, the bound."""
    if comparison["median_ratio"] is not None:
        low, high = comparison["ratio_range"]
        return f"{comparison['median_ratio']:.2f}× ({low:.2f}–{high:.2f}×)"
    if comparison.get("median_ratio_at_most") is not None:
        return f"≤ {comparison['median_ratio_at_most']:.2f}× (a bound: see the runs)"
    return "n/a"


def render(results: dict[str, Any]) -> str:
    """The figures of one `make bench` run as Markdown tables."""
    runs = results.get("runs", 3)
    lines = [f"| seconds of training until ({runs} runs each, interleaved, after a warm-up) | "
             "digitlab | reference | digitlab ÷ reference: median (range) |",
             "|---|---|---|---|"]  # fmt: skip
    for name, (target, ours, theirs) in COMPARISONS.items():
        if name not in results:
            continue
        c = results[name]
        stopped = c.get("theirs_stopped_at", [None] * len(c["theirs_seconds"]))
        ours_stopped = [None] * len(c["ours_seconds"])
        lines.append(f"| {target}: {ours} vs {theirs} | {_runs(c['ours_seconds'], ours_stopped)} | "
                     f"{_runs(c['theirs_seconds'], stopped)} | {_ratio(c)} |")  # fmt: skip
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
        lines += ["", "| pipeline | seconds |", "|---|---|", *rows]
    if results.get("wall_seconds") is not None:
        cap = results.get("peer_cap")
        lines += ["", f"The whole `make bench`: {results['wall_seconds'] / 60:.1f} minutes "
                  f"(a reference stops after {cap}× the seconds digitlab took)."]  # fmt: skip
    return "\n".join(lines).strip()


def update(path: Path, table: str, start: str = START, end: str = END) -> None:
    """Replace what stands between the markers in `path` with `table`."""
    text = path.read_text()
    block = f"{start}\n{table}\n{end}"
    new, count = re.subn(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text,
                         flags=re.S)  # fmt: skip
    if count != 1:
        raise SystemExit(f"{path}: expected one {start} … {end} block, found {count}")
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
