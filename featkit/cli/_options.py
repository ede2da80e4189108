"""The options several commands share, each declared once (help text, default, type)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from featkit.evaluation.splits import DEFAULT_EPISODES, DEFAULT_TEST_FRACTION
from featkit.workspace import DEFAULT_WORKSPACE


class TrainPrecision(str, Enum):
    """--precision of the training commands (fp16 training is not offered)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class ExtractPrecision(str, Enum):
    """--precision of the inference commands: fp16 is fine for a forward pass."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class StoredFeature(str, Enum):
    """A feature kind a store holds (probe's --feature also takes cls<k> kinds)."""

    cls = "cls"
    patch_mean = "patch_mean"
    both = "cls+patch_mean"


# Pipe-safe: when not on a terminal, tables keep their natural width (no "10-s…").

WORKSPACE_OPTION = typer.Option(
    None,
    "--workspace",
    "-w",
    help="Workspace folder for stores and results (default: $FEATKIT_WORKSPACE or ./featkit_runs).",
)


# Options that several commands share, each declared once here. A command passes its
# default and, where the option means something narrower there, a note that is appended
# to the shared help.
MODEL_HELP = (
    "Backbone: a DINO hub name (dinov2_vits14, ...; `featkit models` lists every name), "
    "timm:<name> or hf:<id or folder>."
)
STORE_HELP = "A store file (<workspace>/<dataset>/<model>.h5)."


def _help(text: str, note: str) -> str:
    return f"{text} {note}" if note else text


def model_option(default: Any = ..., note: str = "") -> Any:
    """--model / -m: the backbone name."""
    return typer.Option(default, "--model", "-m", help=_help(MODEL_HELP, note))


def weights_option(note: str = "") -> Any:
    """--weights: a local checkpoint instead of hub weights."""
    return typer.Option(
        None,
        "--weights",
        help=_help("Local checkpoint (.pth/.safetensors) instead of hub weights.", note),
    )


def image_size_option(note: str = "") -> Any:
    """--image-size: the model's input side."""
    return typer.Option(
        None,
        "--image-size",
        help=_help("Input side in pixels, a multiple of the patch size.", note),
    )


def random_init_option(note: str = "") -> Any:
    """--random-init: the seeded random twin (featkit.backbones.naming)."""
    return typer.Option(
        False,
        "--random-init",
        help=_help("Random weights, the same on every run (a fixed seed), as a baseline.", note),
    )


def device_option(default: str | None = "auto", note: str = "") -> Any:
    """--device: where the model runs."""
    return typer.Option(default, "--device", help=_help("auto, cpu or cuda[:N].", note))


def precision_option(default: Enum) -> Any:
    """--precision: the forward (and training) number format."""
    return typer.Option(
        default,
        "--precision",
        help="auto: bf16 where the CPU (AMX/AVX-512-BF16) or GPU has it, else fp32.",
    )


def stored_feature_option(note: str) -> Any:
    """--feature of the commands that read one stored feature kind."""
    return typer.Option(StoredFeature.cls, "--feature", help=f"Which stored feature {note}.")


def shots_option(note: str = "") -> Any:
    """--shots: images per class of each few-shot setting."""
    return typer.Option(
        "1,5,10,all",
        "--shots",
        help=_help("Images per class: integers, fractions like 10%, 'all'.", note),
    )


def episodes_option(note: str = "") -> Any:
    """--episodes: draws per few-shot setting."""
    return typer.Option(
        DEFAULT_EPISODES,
        "--episodes",
        help=_help("Episodes per few-shot setting ('all' has one).", note),
    )


def seed_option(note: str = "") -> Any:
    """--seed: the split, episodes and whatever else the command draws."""
    return typer.Option(
        0, "--seed", help=_help("Seed of the train/test split and the episodes.", note)
    )


TEST_FRACTION_OPTION = typer.Option(
    DEFAULT_TEST_FRACTION,
    "--test-fraction",
    help="Test share per class when the data name no test split.",
)
STORE_ARGUMENT = typer.Argument(..., help=STORE_HELP)


def resolve_workspace(workspace: Path | None) -> Path:
    """The CLI (not the library) reads the environment."""
    if workspace is not None:
        return workspace
    return Path(os.environ.get("FEATKIT_WORKSPACE", str(DEFAULT_WORKSPACE)))
