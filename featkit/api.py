"""``featkit.<verb>``: thin doors to the CLI's library calls, its defaults and files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featkit.errors import FeatkitError
from featkit.progress import SILENT, Progress
from featkit.workspace import DEFAULT_WORKSPACE

if TYPE_CHECKING:
    import pandas as pd

    from featkit.backbones.base import Backbone
    from featkit.data.images import Dataset
    from featkit.evaluation.probe import ProbeResults, ProbeSettings
    from featkit.extraction.run import ExtractReport, ExtractSettings
    from featkit.tune.run import FinetuneRun, FinetuneSettings


def extract(
    data: Dataset | Path | str,
    backbone: Backbone | str,
    out: Path | str | None = None,
    *,
    workspace: Path | str = DEFAULT_WORKSPACE,
    random_init: bool = False,
    settings: ExtractSettings | None = None,
    progress: Progress = SILENT,
    **options: Any,
) -> ExtractReport:
    """Extract every image of ``data`` (a folder, CSV manifest or :class:`Dataset`) with
    ``backbone`` (a name, with ``random_init`` its seeded random twin ``<name>-random``, or
    a built one) into ``out`` (default: ``<workspace>/<dataset>/<model>.h5``). ``options``:
    :class:`~featkit.extraction.run.ExtractSettings` fields (``precision="fp32"``, ...)."""
    from featkit.backbones.naming import build_backbone, random_init_name
    from featkit.data.images import discover
    from featkit.extraction.run import ExtractSettings
    from featkit.extraction.run import extract as run_extract
    from featkit.workspace import store_path

    dataset = discover(data) if isinstance(data, Path | str) else data
    chosen = replace(settings or ExtractSettings(), **options)
    if isinstance(backbone, str):
        if random_init:
            chosen = replace(chosen, model_name=chosen.model_name or random_init_name(backbone))
        backbone = build_backbone(backbone, pretrained=not random_init)
    target = out or store_path(Path(workspace), dataset.name, chosen.model_name or backbone.name)
    return run_extract(dataset, backbone, Path(target), chosen, progress)


def probe(
    stores: Sequence[Path | str] | None = None,
    workspace: Path | str | None = DEFAULT_WORKSPACE,
    *,
    shots: str = "1,5,10,all",
    episodes: int | None = None,
    protocols: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    seed: int | None = None,
    settings: ProbeSettings | None = None,
    force: bool = False,
    progress: Progress = SILENT,
) -> ProbeResults:
    """Evaluate ``stores`` (default: every store of ``workspace``) and merge the rows into
    the workspace's results CSVs (``workspace=None``: write nothing). Keywords left at
    None keep :class:`~featkit.evaluation.probe.ProbeSettings`'s defaults."""
    from featkit.evaluation.probe import ProbeSettings, ProtocolSpec
    from featkit.evaluation.probe import probe as run_probe
    from featkit.evaluation.splits import parse_shots
    from featkit.workspace import find_stores

    changes: dict[str, Any] = {"episodes": episodes, "seed": seed}
    if protocols is not None:
        changes["protocols"] = tuple(ProtocolSpec(name) for name in protocols)
    if features is not None:
        changes["features"] = tuple(features)
    chosen = replace(
        settings or ProbeSettings(shots=parse_shots(shots)),
        **{k: v for k, v in changes.items() if v is not None},
    )
    paths = [Path(s) for s in stores] if stores else find_stores(Path(workspace or "."))
    if not paths:
        raise FeatkitError(f"workspace {workspace}: expected stores (extract first), found none")
    ws = Path(workspace) if workspace is not None else None
    return run_probe(paths, chosen, ws, progress, force=force)


def finetune(
    source: Path | str,
    backbone: Backbone | str | None = None,
    *,
    data: Path | str | None = None,
    workspace: Path | str | None = DEFAULT_WORKSPACE,
    shots: str = "1,5,10,all",
    episodes: int | None = None,
    seed: int = 0,
    settings: FinetuneSettings | None = None,
    progress: Progress = SILENT,
    **options: Any,
) -> FinetuneRun:
    """Fine-tune on the probes' splits of ``source`` (a store, ``data`` its images; or an
    image folder / manifest); no ``backbone``: the store's, rebuilt from its fingerprint.
    ``options``: :class:`~featkit.tune.run.FinetuneSettings` fields (``method="linear"``)."""
    from featkit.backbones import create_backbone
    from featkit.evaluation.splits import DEFAULT_EPISODES, Sweep, parse_shots
    from featkit.neighbors.questions import rebuild_backbone
    from featkit.store.reader import open_store
    from featkit.tune.run import FinetuneSettings, labelled_images, run_finetune

    rows = labelled_images(Path(source), Path(data) if data is not None else None)
    model_name = None
    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    elif backbone is None:
        if rows.store is None:
            raise FeatkitError(f"{source}: expected a backbone with a data folder, got none")
        with open_store(rows.store) as store:
            backbone = rebuild_backbone(store)
        model_name = rows.store_model
    return run_finetune(
        rows,
        backbone,
        replace(settings or FinetuneSettings(), **options),
        Sweep(parse_shots(shots), episodes or DEFAULT_EPISODES, seed),
        workspace=Path(workspace) if workspace is not None else None,
        model_name=model_name,
        progress=progress,
    )


def read_results(
    workspace: Path | str = DEFAULT_WORKSPACE, *, summary: bool = False
) -> pd.DataFrame:
    """Result rows, one per episode and metric; ``summary=True``: one per configuration
    and metric, mean ± 95 % interval (summary.csv)."""
    from featkit.results.io import read_results as read_rows
    from featkit.results.io import summarize_results

    rows = read_rows(Path(workspace))
    return summarize_results(rows) if summary else rows
