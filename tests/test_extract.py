"""The extraction pass: values against a direct forward, resume, new images, mismatch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from featkit.backbones import Backbone, create_backbone
from featkit.data.images import discover, load_image
from featkit.errors import FeatkitError, FingerprintMismatchError
from featkit.extraction import run as extract_mod
from featkit.extraction.run import ExtractSettings, extract, partial_dir
from featkit.store.reader import StoreWriter, open_store
from tests.helpers import ZOO_REASONS, digits_folder, write_bad_image_zoo

SETTINGS = ExtractSettings(precision="fp32", batch_size=4, shard_size=8, workers=2)
FULL = ExtractSettings(precision="fp32", batch_size=4, shard_size=8, patches="full")


@pytest.fixture(autouse=True)
def one_thread():
    # The box is shared: with 2 intra-op threads and a loaded CPU, OpenMP spin-waits
    # make a tiny forward 50x slower. One thread is also what makes runs bit-comparable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return create_backbone(
        "timm:vit_tiny_patch16_224",
        image_size=32,
        pretrained=False,
        model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2},
    )


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return digits_folder(tmp_path, per_class=3)  # 30 real digits, 32 px


def _store_arrays(path: Path) -> dict[str, object]:
    with open_store(path) as store:
        out: dict[str, object] = {
            "paths": store.paths(include_failed=True),
            "labels": store.labels(include_failed=True),
            "status": store.status(),
            "errors": store.errors(),
            "label_names": store.label_names,
            "fingerprint": store.fingerprint,
        }
        for kind in store.feature_kinds:
            out[kind] = store.raw_rows(kind, 0, store.num_rows)
    return out


def assert_same_store(a: Path, b: Path) -> None:
    left, right = _store_arrays(a), _store_arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], np.ndarray):
            # Bit-for-bit, NaN rows included.
            assert np.array_equal(left[key], right[key], equal_nan=True), key
        else:
            assert left[key] == right[key], key


def test_store_equals_a_direct_fp32_forward(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    dataset = discover(digits)
    out = tmp_path / "s.h5"
    settings = ExtractSettings(precision="fp32", batch_size=7, shard_size=10, patches="full")
    report = extract(dataset, backbone, out, settings)
    assert (report.rows, report.extracted, report.failed) == (30, 30, [])
    transform = backbone.preprocessing.transform()
    batch = torch.stack([transform(load_image(dataset.full_path(r))) for r in dataset.records])
    with torch.inference_mode():
        direct = backbone(batch)
    with open_store(out) as store:
        assert store.paths() == [r.path for r in dataset.records]
        assert store.labels().tolist() == dataset.label_indices()
        assert store.label_names == dataset.label_names
        np.testing.assert_allclose(store.features("cls"), direct.cls.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            store.features("patch_mean"), direct.patches.mean(dim=(1, 2)).numpy(), atol=1e-5
        )
        grid = np.concatenate([g for _, g in store.iter_patches(block=8)])
        np.testing.assert_allclose(grid, direct.patches.half().numpy(), atol=2e-3)
        fp = store.fingerprint
        assert fp["precision"] == "fp32" and fp["patches"] == "full" and fp["image_size"] == 32
        assert fp["preprocessing"]["resize"] == backbone.preprocessing.resize
        assert fp["weights_sha256"].startswith("params:")
    assert not partial_dir(out).exists() and not out.with_name("s.h5.tmp").exists()


def test_bad_files_become_failed_rows_and_the_pass_goes_on(
    tmp_path: Path, backbone: Backbone
) -> None:
    expected = write_bad_image_zoo(tmp_path / "zoo")
    report = extract(discover(tmp_path / "zoo"), backbone, tmp_path / "z.h5", SETTINGS)
    with open_store(tmp_path / "z.h5") as store:
        status = dict(zip(store.paths(include_failed=True), store.status(), strict=True))
        assert status == expected
        reasons = dict(store.failures())
        for name, word in ZOO_REASONS.items():
            assert word in reasons[name].lower()
        cls = store.features(include_failed=True)
        failed = np.array([s == "failed" for s in store.status()])
        assert np.isnan(cls[failed]).all() and np.isfinite(cls[~failed]).all()
    assert sorted(p for p, _ in report.failed) == sorted(ZOO_REASONS)


class _StopAfter:
    """A Progress that kills the pass (like Ctrl-C) after ``n`` images."""

    def __init__(self, n: int) -> None:
        self.left = n

    def task(self, description: str, total: int | None) -> _StopAfter:
        return self

    def advance(self, n: int = 1, **fields: object) -> None:
        self.left -= n
        if self.left <= 0:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_interrupted_run_resumes_to_the_same_store(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    dataset = discover(digits)
    extract(dataset, backbone, tmp_path / "ref.h5", SETTINGS)
    out = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        extract(dataset, backbone, out, SETTINGS, progress=_StopAfter(13))
    assert not out.exists()
    shards = sorted(partial_dir(out).glob("shard-*.h5"))
    assert [p.name for p in shards] == ["shard-000000.h5"]  # 8 done, the second shard was lost
    report = extract(dataset, backbone, out, SETTINGS)
    assert (report.extracted, report.reused) == (22, 8)
    assert_same_store(out, tmp_path / "ref.h5")
    assert not partial_dir(out).exists()


def test_decode_threads_do_not_change_values(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    dataset = discover(digits)
    extract(dataset, backbone, tmp_path / "a.h5", SETTINGS)
    inline = ExtractSettings(precision="fp32", batch_size=4, shard_size=8, workers=0)
    extract(dataset, backbone, tmp_path / "b.h5", inline)
    assert_same_store(tmp_path / "a.h5", tmp_path / "b.h5")


def test_only_new_images_are_extracted(digits: Path, backbone: Backbone, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    held_back = tmp_path / "later"
    held_back.mkdir()
    for name in sorted(p.name for p in (digits / "3").iterdir())[:2]:
        shutil.move(digits / "3" / name, held_back / name)
    first = extract(discover(digits), backbone, out, FULL)
    assert first.rows == 28
    before = _store_arrays(out)
    again = extract(discover(digits), backbone, out, FULL)
    assert again.up_to_date and again.extracted == 0
    for name in (p.name for p in held_back.iterdir()):
        shutil.move(held_back / name, digits / "3" / name)
    removed = sorted((digits / "7").iterdir())[0]
    removed.unlink()
    report = extract(discover(digits), backbone, out, FULL)
    assert (report.extracted, report.rows) == (2, 29)
    after = _store_arrays(out)
    # Rows kept from the previous store are copied exactly.
    old_rows = {p: i for i, p in enumerate(before["paths"])}  # type: ignore[arg-type]
    for i, path in enumerate(after["paths"]):  # type: ignore[arg-type]
        if path in old_rows:
            for kind in ("cls", "patch_mean", "patches"):
                assert np.array_equal(after[kind][i], before[kind][old_rows[path]])  # type: ignore[index]
    assert f"7/{removed.name}" not in after["paths"]  # type: ignore[operator]
    # And the result equals a fresh extraction of the current folder (up to the
    # rounding of other batch compositions).
    extract(discover(digits), backbone, tmp_path / "fresh.h5", FULL)
    fresh = _store_arrays(tmp_path / "fresh.h5")
    assert fresh["paths"] == after["paths"] and fresh["status"] == after["status"]
    np.testing.assert_allclose(after["cls"], fresh["cls"], atol=1e-5)  # type: ignore[arg-type]
    np.testing.assert_allclose(after["patches"], fresh["patches"], atol=2e-3)  # type: ignore[arg-type]


def test_fingerprint_mismatch_is_refused_unless_overwrite(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    out = tmp_path / "s.h5"
    dataset = discover(digits)
    extract(dataset, backbone, out, SETTINGS)
    other = ExtractSettings(precision="bf16", batch_size=4, shard_size=8, patches="none")
    with pytest.raises(
        FingerprintMismatchError, match=r"precision: fp32 -> bf16.*--overwrite"
    ) as err:
        extract(dataset, backbone, out, other)
    assert "patches: mean -> none" in str(err.value) and "\n" not in str(err.value)
    report = extract(
        dataset, backbone, out, ExtractSettings(**{**other.__dict__, "overwrite": True})
    )
    assert report.extracted == 30 and report.precision == "bf16"
    with open_store(out) as store:
        assert store.feature_kinds == ("cls",)


def test_interrupted_run_with_other_settings_is_refused(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    dataset = discover(digits)
    out = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        extract(dataset, backbone, out, SETTINGS, progress=_StopAfter(9))
    with pytest.raises(
        FingerprintMismatchError, match=r"unfinished extraction.*patches: mean -> full"
    ):
        extract(dataset, backbone, out, ExtractSettings(precision="fp32", patches="full"))


def test_crashed_merge_leaves_the_old_store(
    digits: Path, backbone: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.h5"
    victim = sorted((digits / "0").iterdir())[0]
    saved = victim.read_bytes()
    victim.unlink()
    extract(discover(digits), backbone, out, SETTINGS)
    before = _store_arrays(out)
    victim.write_bytes(saved)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(StoreWriter, "write_images", crash)
    with pytest.raises(OSError, match="disk full"):
        extract(discover(digits), backbone, out, SETTINGS)
    monkeypatch.undo()
    after = _store_arrays(out)
    assert after["paths"] == before["paths"]
    assert partial_dir(out).exists()  # the shard of the new image waits for the next run
    report = extract(discover(digits), backbone, out, SETTINGS)
    assert (report.extracted, report.rows) == (0, 30)


def test_user_errors(tmp_path: Path, backbone: Backbone, digits: Path) -> None:
    dataset = discover(digits)
    with pytest.raises(FeatkitError, match="patches: expected one of full, mean, none"):
        extract(dataset, backbone, tmp_path / "s.h5", ExtractSettings(patches="grid"))
    with pytest.raises(FeatkitError, match="batch_size: expected a positive integer, got 0"):
        extract(dataset, backbone, tmp_path / "s.h5", ExtractSettings(batch_size=0))
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(FeatkitError, match=r"cannot be opened.*--overwrite"):
        extract(dataset, backbone, tmp_path / "junk.h5", SETTINGS)


def test_shards_are_capped_in_bytes() -> None:
    # With a full patch grid, --shard-size rows of ViT-B/14 would hold 150 MiB in memory.
    grid_row = 768 * 8 + 16 * 16 * 768 * 2
    assert extract_mod.effective_shard_size(512, 768, (16, 16)) == (64 << 20) // grid_row
    assert extract_mod.effective_shard_size(512, 768, None) == 512
    assert extract_mod.effective_shard_size(512, 10**9, None) == 1


def test_a_second_writer_is_refused(digits: Path, backbone: Backbone, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    with extract_mod._exclusive(out), pytest.raises(FeatkitError, match="other extraction"):
        extract(discover(digits), backbone, out, SETTINGS)
    assert extract(discover(digits), backbone, out, SETTINGS).rows == 30


def test_failed_rows_are_kept_until_retry_failed_or_the_file_changes(
    tmp_path: Path, backbone: Backbone
) -> None:
    data = digits_folder(tmp_path, per_class=1)
    good = sorted((data / "2").iterdir())[0]
    saved = good.read_bytes()
    good.write_bytes(saved[:20])  # truncated
    out = tmp_path / "s.h5"
    assert [p for p, _ in extract(discover(data), backbone, out, SETTINGS).failed] == [
        f"2/{good.name}"
    ]
    assert extract(discover(data), backbone, out, SETTINGS).up_to_date  # unchanged: kept
    retry = ExtractSettings(**{**SETTINGS.__dict__, "retry_failed": True})
    report = extract(discover(data), backbone, out, retry)
    assert (report.extracted, len(report.failed)) == (1, 1)  # decoded again, still bad
    good.write_bytes(saved)  # the user fixes the file: a changed file is extracted again
    report = extract(discover(data), backbone, out, SETTINGS)
    assert (report.extracted, report.failed, report.rows) == (1, [], 10)


def test_a_changed_image_under_the_same_path_is_extracted_again(
    digits: Path, backbone: Backbone, tmp_path: Path
) -> None:
    out = tmp_path / "s.h5"
    extract(discover(digits), backbone, out, SETTINGS)
    a, b = sorted((digits / "3").iterdir())[:2]
    with open_store(out) as store:
        before = store.features("cls")[store.paths().index(f"3/{a.name}")]
    shutil.copyfile(b, a)  # a now holds b's picture under a's path
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    report = extract(discover(digits), backbone, out, SETTINGS)
    assert (report.up_to_date, report.extracted, report.rows) == (False, 1, 30)
    with open_store(out) as store:
        paths = store.paths()
        cls = store.features("cls")
        now = cls[paths.index(f"3/{a.name}")]
        # b's features (up to batch-composition rounding), no longer a's.
        np.testing.assert_allclose(now, cls[paths.index(f"3/{b.name}")], atol=1e-5)
        assert np.abs(now - before).max() > 1e-2
        sizes, mtimes = store.file_stats()  # type: ignore[misc]
        assert (sizes[paths.index(f"3/{a.name}")], mtimes[paths.index(f"3/{a.name}")]) == (
            a.stat().st_size,
            a.stat().st_mtime_ns,
        )
    assert extract(discover(digits), backbone, out, SETTINGS).up_to_date
