"""report.html as a reader sees it: a real headless Chromium at 1400 px wide.

Not in the default run (``-m benchmark``: it starts a browser) and skipped where no
Chromium is installed: ``pytest -m benchmark tests/test_report_browser.py``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featkit.report.build import write_report

BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(BROWSER is None, reason="needs Chromium (apt-get install chromium)"),
]
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "screenshot_report.py"


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_wide_table_stays_inside_the_page_at_1400_px(tmp_path: Path) -> None:
    # Long method labels (several params of one protocol, two features) and seven shot
    # columns: the widest table a probe sweep makes.
    header = "dataset,model,feature,protocol,params,shots,episode,metric,value,seconds,peak_mb\n"
    rows = []
    for feature in ("cls", "patch_mean"):
        for k in (10, 20):
            params = f"index=auto;k={k};temperature=0.07"
            for shots in ("1", "2", "5", "10", "20", "50", "all"):
                for episode, value in enumerate((0.61, 0.67)):
                    rows.append(
                        f"digits,featkit-tiny-dino,{feature},knn,{params},{shots},{episode},"
                        f"balanced_accuracy,{value},0.0123,250.0\n"
                    )
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.csv").write_text(header + "".join(rows))
    page = write_report(tmp_path).html
    shot = load_script().screenshot(page, tmp_path / "page.png", width=1400, height=1600)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[1] == 1400
    ink = pixels < 200
    assert ink[:, :700].any()  # the page drew something
    # Nothing runs off the right edge: the last 40 px are the page margin.
    assert not ink[:, -40:].any()
    # The last shot column ("all") is on screen: its header text is drawn.
    assert ink[:, 700:-40].any()
