"""The one expensive pass: images -> backbone -> HDF5 store, resumable after any crash.

Crash safety (see docs/store.md for the full story)::

    <dataset>/<model>.h5                 the store; only ever replaced whole (os.replace)
    <dataset>/.<model>.h5.partial/       work folder of an unfinished run
        manifest.json                    fingerprint + ordered work list + shard size
        shard-000000.h5 ...              finished shards; each records the work-list
                                         indices of its rows (/index)
    <dataset>/<model>.h5.tmp             the merge in progress

Every file is written under a temporary name, fsynced and renamed into place, so a
``kill -9`` leaves either the previous complete state or finished shards to resume
from. Shard ``k`` always holds work-list rows ``[k*S, (k+1)*S)`` and is batched the same
way, so a resumed run computes exactly the numbers an uninterrupted one does. Because
shards name their rows by work-list index, a distributed run can split the shard
numbers between ranks (rank ``r`` takes shards ``r::world``) and rank 0 merges.

The settings, work list and thread plan live in :mod:`featkit.extraction.plan`, decoding
and the forward pass in :mod:`featkit.extraction.forward`, the shard phase in
:mod:`featkit.extraction.shards`, the merge in :mod:`featkit.extraction.merge`; this
module locks the store, plans and drives them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.cost import extraction_cost, reset_peak, store_cost
from featkit.errors import FeatkitError, FingerprintMismatchError
from featkit.extraction.forward import Runner, torch_threads
from featkit.extraction.merge import merge
from featkit.extraction.plan import (
    MANIFEST,
    ExtractReport,
    ExtractSettings,
    Plan,
    Stat,
    available_cores,
    check_settings,
    check_space,
    effective_shard_size,
    file_stats,
    partial_dir,
    read_manifest,
    shard_path,
    thread_plan,
    write_json_atomic,
)
from featkit.extraction.shards import run_shards, shard_done
from featkit.locks import LockBusyError, file_lock
from featkit.progress import SILENT, Progress
from featkit.store.fingerprint import BINDING_KEYS, INFO_KEYS, differences, make_fingerprint
from featkit.store.reader import STATUS_OK, TMP_SUFFIX, Store, fsync_dir, open_store

if TYPE_CHECKING:
    from featkit.backbones import Backbone
    from featkit.data.images import Dataset, ImageRecord
    from featkit.extraction.distributed import Coordinator

__all__ = ["ExtractReport", "ExtractSettings", "extract", "partial_dir"]

logger = logging.getLogger("featkit")


# -- the entry point -------------------------------------------------------------------
def _existing_store(out_path: Path, fingerprint: dict[str, Any], overwrite: bool) -> Store | None:
    """The previous store if it may be extended; raises on a fingerprint mismatch."""
    if overwrite or not out_path.exists():
        return None
    try:
        store = open_store(out_path)
    except FeatkitError as err:
        raise FeatkitError(f"{err}; pass --overwrite to replace it") from None
    diffs = differences(store.fingerprint, fingerprint, BINDING_KEYS)
    if diffs:
        store.close()
        raise FingerprintMismatchError(
            f"store {out_path}: expected the settings it was made with, got different "
            f"{'; '.join(diffs)} (pass --overwrite to replace it, or --name/--out to keep both)"
        )
    for line in differences(store.fingerprint, fingerprint, INFO_KEYS):
        logger.warning("store %s was made with %s; extending it anyway", out_path, line)
    return store


def _matches(store: Store, dataset: Dataset) -> bool:
    """True when the store already has exactly the dataset's rows, labels and splits."""
    records = dataset.records
    if store.num_rows != len(records) or store.label_names != tuple(dataset.label_names):
        return False
    index = {name: i for i, name in enumerate(dataset.label_names)}
    labels = np.array([-1 if r.label is None else index[r.label] for r in records])
    return (
        store.paths(include_failed=True) == [r.path for r in records]
        and np.array_equal(store.labels(include_failed=True), labels)
        and store.splits(include_failed=True) == [r.split or "" for r in records]
    )


def _work_list(
    records: Iterable[ImageRecord],
    store: Store | None,
    retry: bool,
    stats: dict[str, Stat] | None = None,
) -> list[str]:
    """The images to extract: new ones, changed ones, and failed ones with ``retry``.

    A row is keyed by path, size and modification time: an image replaced under the
    same path is extracted again. Rows of stores that recorded no file state (older
    versions) are kept as they are.
    """
    if store is None:
        return sorted(r.path for r in records)
    paths = store.paths(include_failed=True)
    have = dict(zip(paths, store.status(), strict=True))
    recorded = store.file_stats()
    changed: set[str] = set()
    if recorded is not None and stats:
        for p, size, mtime in zip(paths, recorded[0].tolist(), recorded[1].tolist(), strict=True):
            now = stats.get(p)
            if size >= 0 and now is not None and now[0] >= 0 and now != (size, mtime):
                changed.add(p)
    return sorted(
        r.path
        for r in records
        if r.path not in have or r.path in changed or (retry and have[r.path] != STATUS_OK)
    )


def _prepare_work_dir(
    work_dir: Path, plan: Plan, store_plan_id: str | None, overwrite: bool
) -> None:
    """Reuse the work folder of an interrupted identical run; otherwise start it afresh."""
    manifest = read_manifest(work_dir) if work_dir.exists() else None
    if manifest is not None:
        found = manifest.get("plan_id")
        if found == plan.plan_id:
            return  # resume
        # found == store_plan_id: killed after its merge replaced the store; just tidy up.
        if found != store_plan_id and not overwrite:
            diffs = differences(manifest.get("fingerprint", {}), plan.fingerprint, BINDING_KEYS)
            if diffs:
                raise FingerprintMismatchError(
                    f"unfinished extraction {work_dir}: expected the settings it was started "
                    f"with, got different {'; '.join(diffs)} (pass --overwrite to discard it)"
                )
            logger.warning(
                "the images changed since the interrupted run in %s; starting that part again",
                work_dir,
            )
    if work_dir.exists():
        shutil.rmtree(work_dir)
    if plan.work:
        work_dir.mkdir(parents=True)
        write_json_atomic(work_dir / MANIFEST, plan.to_json())


@contextlib.contextmanager
def _exclusive(out_path: Path) -> Iterator[None]:
    """One writer per store: a second ``featkit extract`` on it fails instead of interleaving."""
    try:
        with file_lock(out_path.with_name(f".{out_path.name}.lock"), wait=False):
            yield
    except LockBusyError:
        raise FeatkitError(
            f"store {out_path}: expected no other extraction writing it, but one is "
            "running (wait for it, or use --out/--name for a separate store)"
        ) from None


def extract(
    dataset: Dataset,
    backbone: Backbone,
    out_path: Path,
    settings: ExtractSettings | None = None,
    progress: Progress = SILENT,
    coordinator: Coordinator | None = None,
) -> ExtractReport:
    """Extract every image of ``dataset`` with ``backbone`` into the store ``out_path``.

    Resumes an interrupted run, extracts only images the store does not have yet, and
    refuses (:class:`FingerprintMismatchError`) to extend a store made with other
    weights, preprocessing, precision, image size or patch mode unless
    ``settings.overwrite``. Images that cannot be decoded become ``failed`` rows with
    their reason. The backbone is moved to the chosen device and put in eval mode.

    ``coordinator`` (see :mod:`featkit.extraction.distributed`) splits the pass over processes:
    rank 0 plans and merges, rank ``r`` extracts shards ``r::world``. Every rank
    returns a report on the finished store; ``extracted`` counts its own share.
    """
    from featkit.extraction.distributed import LOCAL
    from featkit.precision import detect_hardware, resolve_device, resolve_precision

    settings = settings or ExtractSettings()
    coordinator = coordinator or LOCAL
    started = time.perf_counter()
    check_settings(settings)
    out_path = Path(out_path)
    if not dataset.records:
        raise FeatkitError(f"data set {dataset.name}: expected at least one image, got none")
    crop, patch = backbone.preprocessing.crop, backbone.patch_size
    if crop % patch:
        raise FeatkitError(
            f"image size: expected a multiple of the patch size {patch} of {backbone.name}, "
            f"got {crop}"
        )
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, detect_hardware(device))
    # A backbone whose width depends on the images (pixels: one channel when every image
    # is grey) settles it once for the whole data set, so the store has one width.
    adapt = getattr(backbone, "adapt_to_images", None)
    adapted = adapt([dataset.root / r.path for r in dataset.records]) if adapt else {}
    fingerprint = {
        **make_fingerprint(backbone, precision=precision, patches=settings.patches),
        **adapted,
    }
    if settings.layers != 1:
        depth = backbone.depth()
        if settings.layers > depth:
            raise FeatkitError(
                f"layers: expected 1 to {max(depth, 1)} for {backbone.name} ({depth} "
                f"transformer blocks), got {settings.layers}"
            )
        fingerprint["layers"] = settings.layers  # absent for 1, so earlier stores still match
    dim = backbone.embed_dim
    grid_hw = (crop // patch, crop // patch) if settings.patches == "full" else None
    work_dir = partial_dir(out_path)
    main = coordinator.rank == 0
    # pixels: CLS and patch mean are the same vector; the store keeps one copy.
    mean_is_cls = bool(getattr(backbone, "cls_is_patch_mean", False))
    stats: dict[str, Stat] = {}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_path) if main else contextlib.nullcontext():
        # 1. Rank 0 plans (and writes the manifest); the others read the manifest.
        plan, previous, up_to_date = None, None, False
        if main:
            stats = file_stats(dataset)
            plan, previous, up_to_date = _plan(
                dataset, out_path, settings, fingerprint, dim, grid_hw, stats
            )
        coordinator.barrier()
        if not main:
            plan = _plan_from_manifest(work_dir, fingerprint)
        # 2. Every rank extracts its share of the missing shards.
        extracted, seconds = 0, 0.0
        if plan is not None and plan.work and not up_to_date:
            mine = range(coordinator.rank, plan.num_shards, coordinator.world)
            todo = [k for k in mine if not shard_done(shard_path(work_dir, k), plan, k)]
            if todo:
                reset_peak(device)
                backbone.to(device).eval()
                threads = thread_plan(device, available_cores(), settings.workers)
                runner = Runner(
                    backbone,
                    device,
                    precision,
                    settings.patches,
                    settings.layers,
                    threads=threads,
                    mean_is_cls=mean_is_cls,
                )
                with torch_threads(threads.torch_threads):
                    extracted, seconds = run_shards(
                        plan,
                        todo,
                        work_dir,
                        dataset.root,
                        runner,
                        settings.batch_size,
                        grid_hw or (0, 0),
                        progress,
                    )
        coordinator.barrier()
        # 3. Rank 0 merges.
        if main and plan is not None and not up_to_date:
            model_name = settings.model_name or backbone.name
            cost = (  # this pass's share; a pass that ran nothing keeps the old record
                extraction_cost(extracted, seconds, device, precision, settings.batch_size)
                if extracted
                else store_cost(previous)
            )
            merge(
                out_path,
                dataset,
                plan,
                work_dir,
                previous,
                model_name,
                dim,
                grid_hw,
                settings.patches,
                progress,
                stats,
                cost=cost,
                mean_is_cls=mean_is_cls,
            )
            if work_dir.exists():
                shutil.rmtree(work_dir)
                fsync_dir(out_path.parent)
        coordinator.barrier()

    with open_store(out_path) as final:
        failed = final.failures()
        rows = final.num_rows
    return ExtractReport(
        path=out_path,
        rows=rows,
        extracted=extracted,
        reused=rows - extracted,
        failed=failed,
        seconds=time.perf_counter() - started,
        images_per_second=extracted / seconds if seconds > 0 else 0.0,
        file_size=out_path.stat().st_size,
        precision=precision,
        device=device,
        up_to_date=up_to_date,
    )


def _plan(
    dataset: Dataset,
    out_path: Path,
    settings: ExtractSettings,
    fingerprint: dict[str, Any],
    dim: int,
    grid_hw: tuple[int, int] | None,
    stats: dict[str, Stat],
) -> tuple[Plan, Path | None, bool]:
    """(plan, previous store to extend or None, already up to date?), work folder ready."""
    store = _existing_store(out_path, fingerprint, settings.overwrite)
    try:
        store_plan_id = store.attr("plan_id") if store is not None else None
        work = _work_list(dataset.records, store, settings.retry_failed, stats)
        up_to_date = store is not None and not work and _matches(store, dataset)
    finally:
        if store is not None:
            store.close()
    shard_size = effective_shard_size(settings.shard_size, dim, grid_hw, settings.layers)
    plan = Plan(
        fingerprint=fingerprint,
        work=work,
        shard_size=shard_size,
        stats=[stats.get(p, (-1, -1)) for p in work],
    )
    work_dir = partial_dir(out_path)
    _prepare_work_dir(work_dir, plan, store_plan_id, settings.overwrite)
    if not up_to_date:
        check_space(out_path, work_dir, len(work), len(dataset.records), dim, grid_hw, settings)
    stale_tmp = out_path.with_name(out_path.name + TMP_SUFFIX)
    if stale_tmp.exists():
        stale_tmp.unlink()
    return plan, (out_path if store is not None else None), up_to_date


def _plan_from_manifest(work_dir: Path, fingerprint: dict[str, Any]) -> Plan | None:
    """The plan rank 0 wrote; None when it found nothing to extract."""
    manifest = read_manifest(work_dir)
    if manifest is None:
        return None
    diffs = differences(manifest["fingerprint"], fingerprint, BINDING_KEYS)
    if diffs:
        raise FingerprintMismatchError(
            f"extraction {work_dir}: expected every process to use the settings of rank 0, "
            f"got different {'; '.join(diffs)}"
        )
    plan = Plan(
        fingerprint=manifest["fingerprint"],
        work=list(manifest["work"]),
        shard_size=int(manifest["shard_size"]),
        stats=[(int(a), int(b)) for a, b in manifest.get("stats", [])],
    )
    if plan.plan_id != manifest.get("plan_id"):
        raise RuntimeError(f"manifest {work_dir / MANIFEST} does not match its own plan id")
    return plan
