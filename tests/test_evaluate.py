"""The sweep on arrays and stores, and the results files (merge, atomicity, summary)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featkit.errors import FeatkitError
from featkit.evaluation.probe import (
    EvalData,
    ProbeSettings,
    ProtocolSpec,
    evaluate_arrays,
    load_store,
    probe,
    protocol_grid,
)
from featkit.evaluation.splits import episodes, parse_shots
from featkit.metrics import summarize
from featkit.protocols import create_protocol
from featkit.results.io import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    read_confusion,
    read_per_class,
    read_results,
    read_summary,
    result_rows,
    run_id,
    write_results,
)

FAST = (
    ProtocolSpec.of("knn", k=5),
    ProtocolSpec.of("prototype"),
    ProtocolSpec.of("logistic", c=1.0),
    ProtocolSpec.of("kmeans"),
)


def toy_arrays(sizes: tuple[int, ...] = (30, 20, 12), dim: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    X = (rng.normal(size=(len(sizes), dim))[y] * 3 + rng.normal(size=(y.size, dim))).astype(
        np.float32
    )
    paths = [f"c{c}/{i:04d}.png" for i, c in enumerate(y)]
    return X, y, paths


def toy_data(**kwargs) -> EvalData:
    X, y, paths = toy_arrays(**kwargs)
    names = tuple(f"class{c}" for c in range(int(y.max()) + 1))
    return EvalData("toy", "m", paths, y, {"cls": X}, None, names, {"sha": "x"}, "toy.h5")


def make_store(
    folder: Path,
    model: str = "m",
    sizes: tuple[int, ...] = (30, 20, 12),
    *,
    labels: bool = True,
    nan_row: int | None = None,
    seed: int = 0,
) -> Path:
    """A real store written with the store module's writer (NaN rows marked ok on purpose)."""
    from featkit.store.reader import StoreWriter, atomic_hdf5
    from featkit.workspace import store_path

    X, y, paths = toy_arrays(sizes, seed=seed)
    if nan_row is not None:
        X[nan_row] = np.nan
    out = store_path(folder, "toy", model)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f"class{c}" for c in range(len(sizes))] if labels else []
    with atomic_hdf5(out) as h5:
        writer = StoreWriter(
            h5,
            num_rows=len(y),
            dim=X.shape[1],
            dataset="toy",
            model=model,
            label_names=names,
            fingerprint={"model": model, "seed": seed},
            patch_mean=True,
        )
        writer.write_features(0, X, X[:, ::-1].copy())
        writer.write_images(
            paths,
            y if labels else np.full(len(y), -1),
            [""] * len(y),
            ["ok"] * len(y),
            [""] * len(y),
        )
    return out


def test_rows_follow_the_contract() -> None:
    settings = ProbeSettings(protocols=FAST, shots=parse_shots("1,5,all"), episodes=3)
    result = evaluate_arrays(toy_data(), settings)
    rows = result.results
    assert list(rows.columns) == list(RESULT_COLUMNS)
    assert set(rows["shots"]) == {"0", "1", "5", "all"}
    assert set(rows.loc[rows["protocol"] == "kmeans", "shots"]) == {"0"}
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(rows["metric"])
    assert {"nmi", "ari"} <= set(rows.loc[rows["protocol"] == "kmeans", "metric"])
    assert "macro_auroc" in set(rows.loc[rows["protocol"] == "logistic", "metric"])
    per_run = rows.groupby("run_id")[["protocol", "shots", "episode"]].nunique()
    assert (per_run == 1).all().all()  # one run = one (protocol, shots, episode)
    counts = rows[rows["metric"] == "accuracy"].groupby(["protocol", "shots"]).size()
    assert counts[("knn", "1")] == 3 and counts[("knn", "all")] == 1
    assert counts[("kmeans", "0")] == 3
    five = rows[(rows["shots"] == "5") & (rows["metric"] == "accuracy")]
    assert set(five["n_train"]) == {15} and set(five["effective_shots"]) == {5}


def test_a_row_equals_fitting_the_protocol_by_hand() -> None:
    data = toy_data()
    settings = ProbeSettings(protocols=(ProtocolSpec.of("knn", k=5),), shots=parse_shots("5"))
    rows = evaluate_arrays(data, settings).results
    draw = next(iter(episodes(data.paths, data.labels, None, "5", 10, seed=0)))
    X = data.features["cls"]
    model = create_protocol("knn", k=5).fit(X[draw.train], data.labels[draw.train])
    expected = np.mean(model.predict(X[draw.test]) == data.labels[draw.test])
    got = rows[(rows["episode"] == 0) & (rows["metric"] == "accuracy")]["value"]
    assert got.tolist() == [pytest.approx(expected)]


def test_per_class_and_confusion_agree_with_the_rows() -> None:
    settings = ProbeSettings(protocols=FAST[:2], shots=parse_shots("all"))
    result = evaluate_arrays(toy_data(), settings)
    for rid, cells in result.confusion.groupby("run_id"):
        row = result.results[(result.results["run_id"] == rid)].iloc[0]
        assert cells["count"].sum() == row["n_test"]
        right = cells.loc[cells["true"] == cells["pred"], "count"].sum()
        accuracy = result.results[
            (result.results["run_id"] == rid) & (result.results["metric"] == "accuracy")
        ]["value"]
        assert right / row["n_test"] == pytest.approx(float(accuracy.iloc[0]))
        recalls = result.per_class[result.per_class["run_id"] == rid]
        assert recalls["class"].tolist() == ["class0", "class1", "class2"]
        assert recalls["n_test"].sum() == row["n_test"]


def test_bad_input_is_reported_clearly() -> None:
    data = toy_data()
    data.labels = np.full_like(data.labels, -1)
    with pytest.raises(FeatkitError, match=r"expected labels for protocol\(s\) knn"):
        evaluate_arrays(data, ProbeSettings(protocols=FAST))
    data = toy_data()
    data.features["cls"][4, 1] = np.nan
    with pytest.raises(FeatkitError, match=r"finite cls features, got NaN/inf in 1 image"):
        evaluate_arrays(data, ProbeSettings(protocols=FAST))
    data = toy_data(sizes=(25,))
    with pytest.raises(FeatkitError, match=r"toy\.h5: .*at least 2 classes"):
        evaluate_arrays(data, ProbeSettings(protocols=FAST))
    with pytest.raises(FeatkitError, match="--shots 99"):
        evaluate_arrays(toy_data(), ProbeSettings(protocols=FAST, shots=parse_shots("99")))


def test_protocol_grid_expands_every_combination() -> None:
    specs = protocol_grid("knn", {"k": [10, 20], "temperature": [0.07]})
    assert [dict(s.params) for s in specs] == [
        {"k": 10, "temperature": 0.07},
        {"k": 20, "temperature": 0.07},
    ]
    assert specs[0].params_string() == "index=auto;k=10;temperature=0.07"
    assert "seed" not in ProtocolSpec("kmeans").params_string()


# -- results files ---------------------------------------------------------------------


def test_rewriting_a_run_replaces_its_rows(tmp_path: Path) -> None:
    settings = ProbeSettings(protocols=FAST[:2], shots=parse_shots("1,all"), episodes=2)
    result = evaluate_arrays(toy_data(), settings)
    for _ in range(2):
        write_results(tmp_path, result.results, result.per_class, result.confusion)
    assert len(read_results(tmp_path)) == len(result.results)
    assert len(read_per_class(tmp_path)) == len(result.per_class)
    assert len(read_confusion(tmp_path)) == len(result.confusion)
    # Another seed supersedes the same configurations instead of being averaged in.
    other = evaluate_arrays(toy_data(), ProbeSettings(protocols=FAST[:1], seed=5, episodes=2))
    write_results(tmp_path, other.results)
    first = result.results
    overlap = (first["protocol"] == FAST[0].name) & first["shots"].isin(set(other.results["shots"]))
    assert overlap.any()
    assert len(read_results(tmp_path)) == int((~overlap).sum()) + len(other.results)
    summary = read_summary(tmp_path)
    assert (summary.loc[summary["shots"] == "1", "n_episodes"] == 2).all()
    # New episodes of unchanged settings add to the old ones.
    more = evaluate_arrays(toy_data(), ProbeSettings(protocols=FAST[:1], seed=5, episodes=3))
    extra = more.results[more.results["episode"].astype(int) == 2]
    write_results(tmp_path, extra)
    summary = read_summary(tmp_path)
    knn_1 = summary[(summary["shots"] == "1") & (summary["protocol"] == FAST[0].name)]
    assert (knn_1["n_episodes"] == 3).all()


def test_summary_is_recomputed_from_all_rows(tmp_path: Path) -> None:
    base = {"dataset": "d", "model": "m", "feature": "cls", "protocol": "finetune-lora"}
    base |= {"params": "r=8", "shots": "10", "seed": 0, "store": "", "n_train": 1, "n_test": 1}
    for episode, value in enumerate([0.5, 0.7, 0.9]):
        rid = run_id({"fp": 1}, "cls", "finetune-lora", "r=8", "10", 0, episode)
        rows = result_rows({**base, "episode": episode, "run_id": rid}, {"accuracy": value})
        write_results(tmp_path, rows)
    summary = read_summary(tmp_path)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    (row,) = summary.to_dict("records")
    expected = summarize([0.5, 0.7, 0.9])
    assert row["shots"] == "10" and row["n_episodes"] == 3
    assert row["mean"] == pytest.approx(expected.mean)
    assert row["ci95_low"] == pytest.approx(expected.ci95_low)


def test_text_columns_survive_a_round_trip(tmp_path: Path) -> None:
    rows = [
        {
            "run_id": f"r{i}",
            "metric": "accuracy",
            "value": 0.5,
            "shots": s,
            "params": "",
            "episode": 0,
        }
        for i, s in enumerate(["1", "10%", "all", "0"])
    ]
    write_results(tmp_path, rows)
    back = read_results(tmp_path)
    assert back["shots"].tolist() == ["1", "10%", "all", "0"]
    assert back["params"].tolist() == [""] * 4
    with pytest.raises(FeatkitError, match="run_id"):
        write_results(tmp_path, [{"metric": "accuracy", "value": 1.0}])


def test_a_crash_while_writing_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [{"run_id": "a", "metric": "accuracy", "value": 0.5}]
    write_results(tmp_path, first)
    before = (tmp_path / "results" / "results.csv").read_bytes()

    def crash(self: pd.DataFrame, target: Path, **kwargs: object) -> None:
        Path(target).write_text("dataset,model\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, [{"run_id": "b", "metric": "accuracy", "value": 0.9}])
    monkeypatch.undo()
    assert (tmp_path / "results" / "results.csv").read_bytes() == before
    leftovers = [p for p in os.listdir(tmp_path / "results") if p.endswith(".tmp")]
    assert leftovers == []


# -- stores ----------------------------------------------------------------------------


def test_probe_reads_stores_and_writes_the_workspace(tmp_path: Path) -> None:
    stores = [make_store(tmp_path, "model_a"), make_store(tmp_path, "model_b", seed=1)]
    settings = ProbeSettings(
        protocols=FAST[:2],
        shots=parse_shots("1,all"),
        features=("cls", "cls+patch_mean"),
        episodes=2,
    )
    result = probe(stores, settings, workspace=tmp_path)
    written = read_results(tmp_path)
    assert len(written) == len(result.results) > 0
    assert set(written["model"]) == {"model_a", "model_b"}
    assert set(written["feature"]) == {"cls", "cls+patch_mean"}
    # both models were scored on the same test images
    a, b = (written[written["model"] == m] for m in ("model_a", "model_b"))
    assert a["n_test"].tolist() == b["n_test"].tolist()


def test_probe_checks_every_store_before_evaluating(tmp_path: Path) -> None:
    good = make_store(tmp_path, "good")
    bad = make_store(tmp_path, "bad", nan_row=3)
    with pytest.raises(FeatkitError, match=r"bad\.h5: expected finite cls features"):
        probe([good, bad], ProbeSettings(protocols=FAST[:1]), workspace=tmp_path)
    assert read_results(tmp_path).empty  # nothing half-done was written


def test_what_a_protocol_chose_is_recorded_beside_its_rows(tmp_path: Path) -> None:
    import json

    from featkit_protocols.logistic import Logistic

    store = make_store(tmp_path, "model_a")
    settings = ProbeSettings(
        protocols=(ProtocolSpec.of("logistic", n_c=5),), shots=parse_shots("5"), episodes=2
    )
    probe([store], settings, workspace=tmp_path)
    written = read_results(tmp_path)
    data = load_store(store, ["cls"])
    draws = {
        d.episode: d
        for d in episodes(data.paths, data.labels, data.splits, "5", 2, seed=0, warn=False)
    }
    X, y = data.features["cls"], np.asarray(data.labels)
    for episode, rows in written.groupby("episode"):
        assert set(rows["fitted"]) == {rows["fitted"].iloc[0]}  # one fit, every metric row
        fitted = json.loads(rows["fitted"].iloc[0])
        # The same support refitted by hand selects the same C.
        draw = draws[int(episode)]
        again = Logistic(n_c=5).fit(X[draw.train], y[draw.train])
        assert fitted["C"] == again.fitted_params_["C"]
