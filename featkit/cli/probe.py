"""``featkit probe``: zero-shot, few-shot and full-data protocols on stored features."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from featkit.cli._common import (
    console,
    out,
    progress_bars,
    user_errors,
)
from featkit.cli._options import (
    TEST_FRACTION_OPTION,
    WORKSPACE_OPTION,
    episodes_option,
    resolve_workspace,
    seed_option,
    shots_option,
)
from featkit.errors import FeatkitError

if TYPE_CHECKING:
    from featkit.evaluation.probe import ProtocolSpec

ORDER = 20


def _list(text: str, option: str, cast: Callable[[str], Any]) -> list[Any]:
    values = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        try:
            values.append(cast(token))
        except ValueError:
            raise FeatkitError(
                f"{option}: expected a comma-separated list of {cast.__name__}, got {token!r}"
            ) from None
    return values


# The options before --param, kept as hidden spellings of it: (flag, protocol.setting).
_ALIASES = {
    "knn_k": ("--knn-k", "knn.k"),
    "knn_t": ("--knn-t", "knn.temperature"),
    "logistic_c": ("--logistic-c", "logistic.c"),
    "logistic_max_iter": ("--logistic-max-iter", "logistic.max_iter"),
    "balanced_base": ("--balanced-base", "balanced.base"),
    "balanced_beta": ("--balanced-beta", "balanced.beta"),
    "balanced_tau": ("--balanced-tau", "balanced.tau"),
    "kmeans_n_init": ("--kmeans-n-init", "kmeans.n_init"),
}


def _grids(params: Sequence[str], aliases: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """``--param knn.k=10,20`` (and the hidden aliases) → ``{"knn": {"k": [10, 20]}}``."""
    from featkit.protocols.params import parse_param

    given = [("--param", text) for text in params]
    for key, value in aliases.items():
        if value is not None:
            flag, target = _ALIASES[key]
            given.append((flag, f"{target}={value}"))
    grids: dict[str, dict[str, list[Any]]] = {}
    for option, text in given:
        name, setting, values = parse_param(text, option)
        if setting in grids.setdefault(name, {}):
            raise FeatkitError(f"{option} {name}.{setting}: expected it once, got it twice")
        grids[name][setting] = values
    return grids


def _specs(protocols: str | None, grids: dict[str, dict[str, list[Any]]]) -> list[ProtocolSpec]:
    from featkit.evaluation.probe import protocol_grid
    from featkit.protocols import get_protocol_class, ordered_protocols

    if protocols is None:
        names = ordered_protocols(default_only=True)
    else:
        names = list(dict.fromkeys(_list(protocols, "--protocols", str)))
    if not names:
        raise FeatkitError("--protocols: expected at least one protocol name, got none")
    for name in names:
        get_protocol_class(name)  # unknown names fail here, with close matches
    stray = [n for n in grids if n not in names]
    if stray:
        raise FeatkitError(
            f"--param {stray[0]}.…: expected a protocol that runs ({', '.join(names)}), "
            f"got {stray[0]} (add it to --protocols)"
        )
    return [spec for name in names for spec in protocol_grid(name, grids.get(name, {}))]


def _protocol_list() -> Any:
    """Every installed protocol with its settings, types and defaults (--list-protocols)."""
    from rich.table import Table

    from featkit.protocols import get_protocol_class, ordered_protocols
    from featkit.protocols.params import parameters

    table = Table(title="protocols (--protocols NAME; settings: --param NAME.SETTING=V1,V2)")
    for column in ("protocol", "runs", "settings"):
        table.add_column(column, no_wrap=column != "settings")
    for name in ordered_protocols():
        cls = get_protocol_class(name)
        runs = ("default" if cls.default else "when named") + (
            "" if cls.supervised else ", label-free"
        )
        settings = ", ".join(f"{p.name}: {p.type_text()} = {p.default!r}" for p in parameters(cls))
        table.add_row(name, runs, settings)
    return table


@user_errors
def probe(
    stores: list[Path] = typer.Argument(
        None, help="Store files (.h5); default: every store of the workspace.", show_default=False
    ),
    shots: str = shots_option(),
    episodes: int = episodes_option(),
    seed: int = seed_option(),
    test_fraction: float = TEST_FRACTION_OPTION,
    protocols: str | None = typer.Option(
        None,
        "--protocols",
        help="Comma-separated protocols; default: every installed protocol marked default "
        "(see --list-protocols).",
        show_default=False,
    ),
    feature: str = typer.Option(
        "cls",
        "--feature",
        help="cls, patch_mean, cls+patch_mean, or cls<k> / cls<k>+avgpool (the official "
        "linear-evaluation features, CLS of the last k blocks; extract with --layers k); "
        "comma-separated for several.",
    ),
    params: list[str] = typer.Option(
        None,
        "--param",
        help="A protocol setting, PROTOCOL.SETTING=V1,V2 (several values: a grid); "
        "repeatable. Settings and types: --list-protocols.",
        show_default=False,
    ),
    list_protocols: bool = typer.Option(
        False, "--list-protocols", help="List the installed protocols and their settings."
    ),
    # Hidden spellings of --param from before it existed (see _ALIASES).
    knn_k: str | None = typer.Option(None, "--knn-k", hidden=True),
    knn_t: str | None = typer.Option(None, "--knn-t", hidden=True),
    logistic_c: str | None = typer.Option(None, "--logistic-c", hidden=True),
    logistic_max_iter: int | None = typer.Option(None, "--logistic-max-iter", hidden=True),
    balanced_base: str | None = typer.Option(None, "--balanced-base", hidden=True),
    balanced_beta: str | None = typer.Option(None, "--balanced-beta", hidden=True),
    balanced_tau: str | None = typer.Option(None, "--balanced-tau", hidden=True),
    kmeans_n_init: int | None = typer.Option(None, "--kmeans-n-init", hidden=True),
    workspace: Path | None = WORKSPACE_OPTION,
    splits: int = typer.Option(
        1,
        "--splits",
        help="Folds for the 'all' column: N > 1 tests every labelled image once (N-fold).",
    ),
    select: bool = typer.Option(
        False,
        "--select",
        help="Treat each protocol's grid (e.g. --param knn.k=10,20,50) as one method: choose the "
        "setting per episode on a validation split of the training images, never on test.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Recompute even when the workspace already has these results."
    ),
    allow_different_images: bool = typer.Option(
        False,
        "--allow-different-images",
        help="Evaluate stores of one dataset even when they hold different images.",
    ),
) -> None:
    """Evaluate stored features with every installed protocol (k-NN, logistic
    regression, prototypes, class-balanced, clustering and plugins); write
    results/*.csv and print balanced accuracy.

    Every model is scored on the same train/test split and few-shot episodes (a function
    of image paths, labels and --seed). Rerunning replaces rows, it never duplicates them.

    Examples:

      featkit probe --shots 1,5,10

      featkit probe runs/pets/dinov2_vits14.h5 --protocols knn,logistic --param knn.k=10,20

      featkit probe --shots 5,all --feature cls,cls+patch_mean --episodes 20 --seed 1

      featkit probe --protocols balanced --param balanced.beta=0.99,0.999 --param balanced.tau=0,1

      featkit probe --shots 5,all --splits 5   # 'all' as 5-fold: every image tested once

      featkit probe --param knn.k=5,10,20,50 --select   # k chosen on validation, not on test

      featkit probe --list-protocols   # installed protocols (plugins too) and their settings

    An unchanged rerun returns the stored results at once (--force recomputes).
    """
    from featkit.cli._tables import comparison_table
    from featkit.evaluation.probe import ProbeSettings
    from featkit.evaluation.probe import probe as run_probe
    from featkit.evaluation.splits import parse_shots
    from featkit.results.io import summarize_results
    from featkit.store.writer import FEATURE_KINDS_HELP, is_feature_kind
    from featkit.workspace import find_stores, results_dir

    if list_protocols:
        out.print(_protocol_list())
        return
    ws = resolve_workspace(workspace)
    aliases = {
        "knn_k": knn_k,
        "knn_t": knn_t,
        "logistic_c": logistic_c,
        "logistic_max_iter": logistic_max_iter,
        "balanced_base": balanced_base,
        "balanced_beta": balanced_beta,
        "balanced_tau": balanced_tau,
        "kmeans_n_init": kmeans_n_init,
    }
    specs = _specs(protocols, _grids(params or [], aliases))
    kinds = list(dict.fromkeys(_list(feature, "--feature", str)))
    unknown = [k for k in kinds if not is_feature_kind(k)]
    if unknown or not kinds:
        raise FeatkitError(
            f"--feature: expected {FEATURE_KINDS_HELP}, got {', '.join(unknown) or 'nothing'}"
        )
    shot_list = parse_shots(shots)
    settings = ProbeSettings(
        protocols=tuple(specs),
        shots=shot_list,
        features=tuple(kinds),
        episodes=episodes,
        seed=seed,
        test_fraction=test_fraction,
        splits=splits,
        select=select,
    )
    paths = list(stores) if stores else find_stores(ws)
    if not paths:
        raise FeatkitError(
            f"workspace {ws}: expected stores (run featkit extract or featkit import first), "
            "found none"
        )
    with progress_bars() as bars:
        result = run_probe(
            paths,
            settings,
            workspace=ws,
            progress=bars,
            force=force,
            allow_different_images=allow_different_images,
        )
    summary = summarize_results(result.results)
    out.print(comparison_table(summary, results=result.results))
    console.print(
        f"results: {results_dir(ws)}/results.csv, summary.csv, per_class.csv, confusion.csv"
    )


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)
