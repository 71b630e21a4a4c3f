"""The HTML report as a browser draws it: Debian's headless chromium renders report.html, and the screenshot must
show the plots and the decoded saliency grid. The grid's teeth: the same page with the grid's PNG broken (a browser
then draws a small icon) must lose the thousands of colours the saliency overlays bring.

Skipped where no chromium is installed (`.ci/run` installs Debian's `chromium` package when it runs as root).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import Build

CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
GRID_PNG = 'id="saliency-grid" alt="saliency grid: image, baseline map, each engine\'s map" src="data:image/png;base64,'


def screenshot(page: Path, tmp: Path) -> np.ndarray:
    """The page rendered 1200 px wide, as uint8 RGB."""
    import matplotlib.image

    assert CHROMIUM is not None
    shot = tmp / f"{page.stem}.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,6000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    return (matplotlib.image.imread(str(shot))[:, :, :3] * 255).round().astype(np.uint8)


def colours(rgb: np.ndarray) -> int:
    packed = (rgb[:, :, 0].astype(np.uint32) << 16) | (rgb[:, :, 1].astype(np.uint32) << 8) | rgb[:, :, 2]
    return len(np.unique(packed))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install chromium)")
def test_report_html_renders_plots_and_saliency_grid(base_build: Build, tmp_path: Path) -> None:
    page = (base_build.out / "report.html").read_text(encoding="utf-8")
    assert page.count(GRID_PNG) == 1
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace(GRID_PNG, GRID_PNG + "AAAA"), encoding="utf-8")
    whole = tmp_path / "whole.html"
    whole.write_text(page, encoding="utf-8")
    rgb, without_grid = screenshot(whole, tmp_path), screenshot(broken, tmp_path)
    # matplotlib's first line colour (C0, #1f77b4): the accuracy-latency and robustness plots drew.
    c0 = np.abs(rgb.astype(int) - np.array([31, 119, 180])).sum(axis=2) < 12
    assert c0.sum() > 200
    assert colours(rgb) - colours(without_grid) > 1000, (colours(rgb), colours(without_grid))
