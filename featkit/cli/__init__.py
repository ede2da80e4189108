"""The ``featkit`` command.

Each sub-command lives in its own module of this package and exposes
``register(app)``; modules are discovered here so that commands never edit a shared
file. ``ORDER`` (an int, default 100) sets where a command appears in ``--help``.
Command modules import heavy libraries (torch, h5py) inside their functions so that
``featkit --help`` stays instant.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import typer

from featkit.threads import passive_wait_defaults

app = typer.Typer(
    name="featkit",
    help=(
        "How far do frozen DINO features get you? Extract embeddings once, then "
        "evaluate zero-shot, few-shot and light fine-tuning in seconds.\n\n"
        "Example: featkit extract data/ --model dinov2_vits14 && featkit probe --shots 1,5,10"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _register_commands() -> None:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(app)


_register_commands()


def main() -> None:
    # Before any OpenMP runtime starts (torch, faiss load inside the commands).
    passive_wait_defaults(os.environ)
    app()
