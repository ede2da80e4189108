"""Where featkit keeps its files.

A workspace (default ``./featkit_runs``) holds one store per (dataset, model) and the
results of every evaluation::

    featkit_runs/
      <dataset>/<model>.h5          embedding stores (featkit extract / import)
      results/results.csv           long results, one row per measured number
      results/summary.csv           mean, std, 95% CI per group
      results/per_class.csv         per-class recall per episode
      results/confusion.csv         confusion counts per episode
      report/                       tables, plots and report.html (featkit report)
      finetune/                     adapters and tuned weights (featkit finetune)
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_WORKSPACE = Path("featkit_runs")
RESULTS_DIR = "results"
REPORT_DIR = "report"
FINETUNE_DIR = "finetune"
STORE_SUFFIX = ".h5"


def safe_name(name: str) -> str:
    """A model or dataset name made safe as one path component.

    ``timm:vit_small_patch14_dinov2.lvd142m`` -> ``timm-vit_small_patch14_dinov2.lvd142m``;
    ``hf:facebook/dinov2-base`` -> ``hf-facebook--dinov2-base``.
    """
    name = name.replace("/", "--").replace(":", "-")
    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", name)
    return name.strip(".") or "unnamed"


def store_path(workspace: Path, dataset: str, model: str) -> Path:
    return Path(workspace) / safe_name(dataset) / f"{safe_name(model)}{STORE_SUFFIX}"


def results_dir(workspace: Path) -> Path:
    return Path(workspace) / RESULTS_DIR


def report_dir(workspace: Path) -> Path:
    return Path(workspace) / REPORT_DIR


def finetune_dir(workspace: Path) -> Path:
    return Path(workspace) / FINETUNE_DIR


def find_stores(workspace: Path) -> list[Path]:
    """Every complete store of the workspace, sorted (``<dataset>/<model>.h5``)."""
    root = Path(workspace)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.glob(f"*/*{STORE_SUFFIX}") if p.is_file() and not p.name.startswith(".")
    )
