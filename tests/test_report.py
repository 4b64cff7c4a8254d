"""The HTML report opens in headless Chromium with every image loaded and no console error."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import chromium, render


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
