"""Every report picture is a real PNG of a sensible size and not blank; the PCA is right."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from featkit.report.build import gather_results, summarize, write_report
from featkit.viz import plots

CLASSES = ("cat", "dog", "fox", "owl")
CLASS_SIZES = (200, 60, 20, 6)  # training images per class: imbalanced on purpose
GROUP = ["dataset", "model", "feature", "protocol", "params", "shots"]


def make_workspace(root: Path, *, episodes: int = 4, seed: int = 0) -> Path:
    """A workspace with plausible results, per-class recall, confusion counts and one store."""
    rng = np.random.default_rng(seed)
    results, per_class, confusion = [], [], []
    configs = [
        ("tiny-a", "knn", "k=20;t=0.07", 0.55),
        ("tiny-a", "logistic", "", 0.62),
        ("tiny-a", "kmeans", "", 0.35),
        ("tiny-b", "knn", "k=20;t=0.07", 0.48),
        ("tiny-b", "finetune-lora", "rank=8", 0.70),
    ]
    for model, protocol, params, base in configs:
        shot_list = ["0"] if protocol == "kmeans" else ["1", "5", "10", "all"]
        for shots in shot_list:
            gain = {"0": 0.0, "1": 0.0, "5": 0.12, "10": 0.18, "all": 0.25}[shots]
            for episode in range(episodes if shots != "all" else 1):
                recalls = []
                for c, (name, size) in enumerate(zip(CLASSES, CLASS_SIZES, strict=True)):
                    n_train = size if shots in ("all", "0") else min(int(shots), size)
                    # Small classes fall behind when all images are used: imbalance.
                    penalty = 0.25 * (1 - size / 200) if shots == "all" else 0.0
                    recall = float(np.clip(base + gain - penalty + rng.normal(0, 0.05), 0, 1))
                    recalls.append(recall)
                    n_test = max(size // 4, 2)
                    per_class.append(
                        [
                            "toy",
                            model,
                            "cls",
                            protocol,
                            params,
                            shots,
                            episode,
                            name,
                            n_train,
                            n_test,
                            recall,
                            "r",
                        ]
                    )
                    right = round(recall * n_test)
                    confusion.append(
                        [
                            "toy",
                            model,
                            "cls",
                            protocol,
                            params,
                            shots,
                            episode,
                            name,
                            name,
                            right,
                            "r",
                        ]
                    )
                    other = CLASSES[(c + 1) % len(CLASSES)]
                    if n_test - right:
                        confusion.append(
                            [
                                "toy",
                                model,
                                "cls",
                                protocol,
                                params,
                                shots,
                                episode,
                                name,
                                other,
                                n_test - right,
                                "r",
                            ]
                        )
                bacc = float(np.mean(recalls))
                for metric, value in (("balanced_accuracy", bacc), ("accuracy", bacc + 0.05)):
                    results.append(
                        ["toy", model, "cls", protocol, params, shots, episode, metric, value]
                    )
    folder = root / "results"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(results, columns=[*GROUP, "episode", "metric", "value"]).to_csv(
        folder / "results.csv", index=False
    )
    pd.DataFrame(
        per_class, columns=[*GROUP, "episode", "class", "n_train", "n_test", "recall", "run_id"]
    ).to_csv(folder / "per_class.csv", index=False)
    pd.DataFrame(confusion, columns=[*GROUP, "episode", "true", "pred", "count", "run_id"]).to_csv(
        folder / "confusion.csv", index=False
    )
    write_store(root / "toy" / "tiny-a.h5", rng)
    return root


def write_store(path: Path, rng: np.random.Generator, dim: int = 16) -> None:
    """A store in the docs/internals.md layout: clustered CLS features, one failed row."""
    labels = np.repeat(np.arange(len(CLASSES)), [40, 20, 10, 6])
    centres = rng.normal(0, 3, (len(CLASSES), dim))
    features = (centres[labels] + rng.normal(0, 1, (len(labels), dim))).astype(np.float32)
    status = np.array(["ok"] * len(labels), dtype=object)
    features[-1] = np.nan
    status[-1] = "failed"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["features/cls"] = features
        f["features/patch_mean"] = features
        f["images/path"] = np.array([f"{i:03d}.png" for i in range(len(labels))], dtype=object)
        f["images/label"] = labels.astype(np.int64)
        f["images/split"] = np.array([""] * len(labels), dtype=object)
        f["images/status"] = status
        f["images/error"] = np.array([""] * len(labels), dtype=object)
        f.attrs["format_version"] = 1
        f.attrs["dataset"] = "toy"
        f.attrs["model"] = "tiny-a"
        f.attrs["label_names"] = json.dumps(list(CLASSES))
        f.attrs["fingerprint"] = json.dumps({})


def assert_real_png(path: Path, min_size: tuple[int, int] = (300, 250)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 5, f"{path} looks blank"


def test_pca_matches_sklearn() -> None:
    from sklearn.decomposition import PCA

    x = np.random.default_rng(1).normal(size=(50, 6)) * np.arange(1, 7)
    coords, ratio = plots.pca_2d(x)
    reference = PCA(n_components=2).fit(x)
    expected = reference.transform(x)
    # Principal directions are defined up to sign.
    for i in range(2):
        sign = np.sign(coords[:, i] @ expected[:, i])
        np.testing.assert_allclose(sign * coords[:, i], expected[:, i], atol=1e-9)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-9)


def test_report_writes_every_plot(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    files = write_report(workspace, shots="10")
    names = sorted(p.name for p in files.plots)
    assert names == [
        "confusion.png",
        "pca_toy_tiny-a.png",
        "recall_vs_class_size.png",
        "shots_balanced_accuracy.png",
    ]
    for path in files.plots:
        assert_real_png(path)
    assert files.folder == workspace / "report"
    assert {p.name for p in files.tables} == {
        "comparison.csv",
        "comparison.md",
        "comparison.tex",
        "data_summary.csv",
    }
    # The best method at 10 shots is the LoRA fine-tune: its confusion matrix is drawn.
    summary = summarize(gather_results(workspace), "balanced_accuracy")
    at10 = summary[summary["shots"] == "10"]
    assert at10.loc[at10["mean"].idxmax(), "protocol"] == "finetune-lora"


def test_confusion_plot_counts_every_class(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "true": ["0", "0", "1", "2", "10"],
            "pred": ["0", "1", "1", "2", "10"],
            "count": [3, 1, 4, 2, 5],
        }
    )
    path = tmp_path / "c.png"
    plots.plot_confusion(frame, path, title="numeric class ids sort as numbers")
    assert_real_png(path)
    # Given an order (largest class first), rows follow it; unnamed classes come after.
    fig = plots.plot_confusion(frame, path, order=["10", "2", "7"])
    rows = [t.get_text().split(" ")[0] for t in fig.axes[0].get_yticklabels()]
    assert rows == ["10", "2", "0", "1"]


def test_pca_plot_needs_two_points(tmp_path: Path) -> None:
    from featkit.errors import FeatkitError

    with pytest.raises(FeatkitError, match="expected at least 2 embeddings"):
        plots.plot_embedding_pca(
            np.zeros((1, 4)), np.zeros(1, dtype=int), ["a"], tmp_path / "x.png"
        )


def test_confusion_falls_back_to_the_best_method_with_counts(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path)
    path = workspace / "results" / "confusion.csv"
    confusion = pd.read_csv(path, dtype=str)
    confusion[confusion["protocol"] != "finetune-lora"].to_csv(path, index=False)
    files = write_report(workspace, shots="10")
    html = files.html.read_text()
    # finetune-lora is best at 10 shots but has no counts; tiny-a logistic is next.
    assert "method (not proven best) at shots=10, tiny-a · logistic" in html
