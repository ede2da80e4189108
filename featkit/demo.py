"""The whole featkit story on bundled real data, with no network.

``run_demo`` builds an imbalanced set of sklearn's real handwritten digits, extracts it
with three feature sources — a pretrained backbone (by default the bundled
``featkit-tiny-dino``), the same architecture with random weights, and raw ``pixels`` —
probes them zero-shot, few-shot and on the full training split, fine-tunes the
pretrained backbone with LoRA on the same splits, and writes the report. Every step is
the same library call a user makes; the demo only chains them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from featkit.backbones import create_backbone
from featkit.backbones.naming import build_backbone, random_init_name
from featkit.data.digits import write_digits
from featkit.data.images import discover
from featkit.evaluation.probe import ProbeSettings, probe
from featkit.evaluation.splits import parse_shots
from featkit.extraction.run import ExtractSettings, extract
from featkit.progress import SILENT, Progress
from featkit.report.build import ReportFiles, write_report
from featkit.tune.run import FinetuneSettings, Sweep, labelled_images, run_finetune
from featkit.workspace import store_path

DATASET = "digits"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults are the README's ``make demo``."""

    model: str = "featkit-tiny-dino"  # any backbone name, e.g. dinov2_vits14 with a network
    weights: Path | None = None  # a local checkpoint for ``model``
    image_size: int | None = None  # None: the model's own
    imbalance: float = 10.0  # largest / smallest class
    max_per_class: int | None = None  # cap on the largest class (tests shrink the demo)
    digit_size: int = 32  # pixels of the generated digit images
    shots: str = "1,5,10,all"
    episodes: int = 10  # few-shot episodes per shot count
    finetune_shots: str = "10"  # "" skips the fine-tune
    finetune_episodes: int = 1
    finetune_steps: int | None = None  # None: the default schedule for the data size
    seed: int = 0
    target: float | None = 0.9  # the balanced accuracy the demo's answer asks about


@dataclass
class DemoReport:
    """Where everything went and how long each step took."""

    workspace: Path
    data: Path
    stores: list[Path]
    report: ReportFiles
    seconds: dict[str, float] = field(default_factory=dict)


def _feature_sources(settings: DemoSettings) -> list[tuple[str, str, bool]]:
    """(store name, backbone name, pretrained) of the three sources compared."""
    return [
        (settings.model, settings.model, True),
        (random_init_name(settings.model), settings.model, False),
        ("pixels", "pixels", True),
    ]


def _digits(workspace: Path, settings: DemoSettings) -> Path:
    folder = workspace / "data" / DATASET
    if not folder.is_dir() or not any(folder.iterdir()):
        write_digits(
            folder,
            imbalance=settings.imbalance,
            size=settings.digit_size,
            seed=settings.seed,
            max_per_class=settings.max_per_class,
        )
    return folder


def run_demo(
    workspace: Path, settings: DemoSettings = DemoSettings(), progress: Progress = SILENT
) -> DemoReport:
    """Run data → extract (3 sources) → probe → LoRA fine-tune → report in ``workspace``."""
    workspace = Path(workspace)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    data = _digits(workspace, settings)
    dataset = discover(data)
    seconds["data"] = time.perf_counter() - started

    stores = []
    for store_name, model, pretrained in _feature_sources(settings):
        began = time.perf_counter()
        # The random twin is `featkit extract --random-init`'s: every demo compares
        # against the same random weights.
        backbone = build_backbone(
            model,
            weights=settings.weights if pretrained and model == settings.model else None,
            image_size=settings.image_size if model == settings.model else None,
            pretrained=pretrained,
        )
        path = store_path(workspace, dataset.name, store_name)
        extract(dataset, backbone, path, ExtractSettings(model_name=store_name), progress)
        stores.append(path)
        seconds[f"extract {store_name}"] = time.perf_counter() - began

    began = time.perf_counter()
    probe_settings = ProbeSettings(
        shots=parse_shots(settings.shots), episodes=settings.episodes, seed=settings.seed
    )
    probe(stores, probe_settings, workspace, progress)
    seconds["probe"] = time.perf_counter() - began

    if settings.finetune_shots:
        began = time.perf_counter()
        backbone = create_backbone(
            settings.model, weights=settings.weights, image_size=settings.image_size
        )
        run_finetune(
            labelled_images(stores[0], data),
            backbone,
            # Digits are not mirror-symmetric: a flipped 2 is no longer a 2.
            FinetuneSettings(method="lora", hflip=False, steps=settings.finetune_steps),
            Sweep(parse_shots(settings.finetune_shots), settings.finetune_episodes, settings.seed),
            workspace=workspace,
            model_name=settings.model,
            progress=progress,
        )
        seconds["finetune"] = time.perf_counter() - began

    began = time.perf_counter()
    report = write_report(workspace, target=settings.target, progress=progress)
    seconds["report"] = time.perf_counter() - began
    seconds["total"] = time.perf_counter() - started
    return DemoReport(workspace, data, stores, report, seconds)
