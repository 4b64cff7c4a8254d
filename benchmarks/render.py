"""The tables of README.md and docs/performance.md, written from reports/bench.json between
`<!-- bench:start -->` and `<!-- bench:end -->`, so the figures are kept in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PAGES = (Path("README.md"), Path("docs/performance.md"))


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.1f} s"


def render(results: dict[str, Any]) -> str:
    """The figures of one `make bench` run as a Markdown table."""
    rows = [("what", "digitlab", "reference", "ratio"), ("---",) * 4]
    if "time_to_99_test_acc" in results:
        ours = results["time_to_99_test_acc"]["digitlab"]["seconds"]
        theirs = results["time_to_99_test_acc"]["pytorch_examples"]["seconds"]
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "n/a"
        rows.append(("seconds to 99.0% test accuracy (reference: pytorch/examples' recipe)",
                     _seconds(ours), _seconds(theirs), ratio))  # fmt: skip
    if "gan_time_to_90_decent" in results:
        seconds = results["gan_time_to_90_decent"]["seconds"]
        rows.append(("seconds until the default GAN is 90% decent", _seconds(seconds), "", ""))
    revisit = results.get("revisit")
    if revisit:
        what = f"`{revisit['key']}` set to {revisit['value']!r} and back"
        ran = ", ".join(revisit["back_ran"]) or "no stage"
        rows.append((f"`dvc repro` after {what} (ran {ran})", _seconds(revisit["back_s"]),
                     f"{_seconds(revisit['away_s'])} going there", ""))  # fmt: skip
    if results.get("noop_repro_s") is not None:
        rows.append(("`dvc repro` with nothing to do", _seconds(results["noop_repro_s"]), "", ""))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


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
    """Put the table of `results` into README.md and docs/performance.md; returns it."""
    table = render(results)
    for path in PAGES:
        update(path, table)
    return table


def main() -> None:
    print(write_tables(json.loads(Path("reports/bench.json").read_text())))


if __name__ == "__main__":
    main()
