"""The HTML report as a browser draws it: Debian's headless chromium renders report.html and the screenshot must
show the robustness plot and the decoded saliency grid (a broken inline image draws as a small grey icon).

Skipped where no chromium is installed (`.ci/run` installs Debian's `chromium` package when it can).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import Build

CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install chromium)")
def test_report_html_renders_plot_and_saliency_grid(base_build: Build, tmp_path: Path) -> None:
    import matplotlib.image

    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,6000",
            f"--screenshot={shot}",
            (base_build.out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    rgb = (matplotlib.image.imread(str(shot))[:, :, :3] * 255).round().astype(np.uint8)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 2000, f"only {len(colours)} colours: the plots or the grid did not draw"
    # matplotlib's first line colour (C0, #1f77b4): the plots drew.
    c0 = np.abs(rgb.astype(int) - np.array([31, 119, 180])).sum(axis=2) < 12
    assert c0.sum() > 200
    # inferno's bright yellows and deep purples of the saliency overlays: the grid's PNG decoded.
    warm = (rgb[:, :, 0] > 200) & (rgb[:, :, 1] > 120) & (rgb[:, :, 2] < 90)
    assert warm.sum() > 50
