"""The HTML report opens in headless Chromium with every image loaded and no console error."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Injected first in <head>: records console errors, uncaught errors and failed resource loads
# (capturing 'error' listener), then on load reports every image that did not decode.
CHECK = """<script>
const digitlabErrors = [];
const originalError = console.error;
console.error = (...args) => { digitlabErrors.push(args.join(' ')); originalError(...args); };
window.addEventListener('error', e => digitlabErrors.push(e.message || ('failed to load ' + (e.target.src || e.target.href))), true);
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'digitlab-check';
  out.textContent = JSON.stringify({images: images.length, broken, errors: digitlabErrors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )


def render(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load a page in headless Chromium; return the in-page image check and console errors."""
    checked = tmp / "checked.html"
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0
    checked.write_text(text[:at] + CHECK + text[at:])
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r'<pre id="digitlab-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading:\n{result.stderr[-2000:]}"
    check = json.loads(html.unescape(match.group(1)))
    return check, check.pop("errors")


def test_check_harness_catches_a_broken_image(tmp_path: Path) -> None:
    if chromium() is None:
        pytest.skip("no Chromium found (install Debian's chromium package; .ci/run does)")
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img alt="gone" src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    check, errors = render(page, tmp_path)
    assert check == {"images": 1, "broken": ["gone"]}
    assert "boom" in errors and any("failed to load" in e and "missing.png" in e for e in errors)
