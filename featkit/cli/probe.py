"""``featkit probe``: zero-shot, few-shot and full-data protocols on stored features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from featkit.cli._common import (
    WORKSPACE_OPTION,
    console,
    out,
    progress_bars,
    resolve_workspace,
    user_errors,
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


def _specs(protocols: str, options: dict[str, dict[str, list[Any]]]) -> list[ProtocolSpec]:
    from featkit.evaluation.probe import protocol_grid
    from featkit.protocols import get_protocol_class

    names = list(dict.fromkeys(_list(protocols, "--protocols", str)))
    if not names:
        raise FeatkitError("--protocols: expected at least one protocol name, got none")
    specs = []
    for name in names:
        get_protocol_class(name)  # unknown names fail here, with close matches
        specs += protocol_grid(name, options.get(name, {}))
    return specs


@user_errors
def probe(
    stores: list[Path] = typer.Argument(
        None, help="Store files (.h5); default: every store of the workspace.", show_default=False
    ),
    shots: str = typer.Option(
        "1,5,10,all", "--shots", help="Images per class: integers, fractions like 10%, 'all'."
    ),
    episodes: int = typer.Option(10, "--episodes", help="Episodes per few-shot setting (all: 1)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split and the episodes."),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction", help="Test share per class when the data name no test split."
    ),
    protocols: str = typer.Option(
        "knn,logistic,prototype,balanced,kmeans", "--protocols", help="Comma-separated protocols."
    ),
    feature: str = typer.Option(
        "cls",
        "--feature",
        help="cls, patch_mean, cls+patch_mean, or cls<k> / cls<k>+avgpool (the official "
        "linear-evaluation features, CLS of the last k blocks; extract with --layers k); "
        "comma-separated for several.",
    ),
    knn_k: str = typer.Option("20", "--knn-k", help="knn: neighbours (list: 10,20)."),
    knn_t: str = typer.Option("0.07", "--knn-t", help="knn: temperature T of exp(sim/T) (list)."),
    logistic_c: str = typer.Option(
        "", "--logistic-c", help="logistic: fixed C (list); default: chosen on the official grid."
    ),
    logistic_max_iter: int = typer.Option(
        100, "--logistic-max-iter", help="logistic: L-BFGS iterations per C."
    ),
    balanced_base: str = typer.Option(
        "logistic", "--balanced-base", help="balanced: wrapped protocol (logistic, knn; list)."
    ),
    balanced_beta: str = typer.Option(
        "0.999", "--balanced-beta", help="balanced: effective-number β in [0, 1) (list)."
    ),
    balanced_tau: str = typer.Option(
        "1.0", "--balanced-tau", help="balanced: logit-adjustment τ ≥ 0 (list)."
    ),
    kmeans_n_init: int = typer.Option(3, "--kmeans-n-init", help="kmeans: restarts."),
    workspace: Path | None = WORKSPACE_OPTION,
    splits: int = typer.Option(
        1,
        "--splits",
        help="Folds for the 'all' column: N > 1 tests every labelled image once (N-fold).",
    ),
    select: bool = typer.Option(
        False,
        "--select",
        help="Treat each protocol's grid (e.g. --knn-k 10,20,50) as one method: choose the "
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
    """Evaluate stored features with k-NN, logistic regression, prototypes, class-balanced
    and clustering protocols; write results/*.csv and print balanced accuracy.

    Every model is scored on the same train/test split and few-shot episodes (a function
    of image paths, labels and --seed). Rerunning replaces rows, it never duplicates them.

    Examples:

      featkit probe --shots 1,5,10

      featkit probe runs/pets/dinov2_vits14.h5 --protocols knn,logistic --knn-k 10,20

      featkit probe --shots 5,all --feature cls,cls+patch_mean --episodes 20 --seed 1

      featkit probe --protocols balanced --balanced-beta 0.99,0.999 --balanced-tau 0,1

      featkit probe --shots 5,all --splits 5   # 'all' as 5-fold: every image tested once

      featkit probe --knn-k 5,10,20,50 --select   # k chosen on validation, not on test

    An unchanged rerun returns the stored results at once (--force recomputes).
    """
    from featkit.cli._tables import comparison_table
    from featkit.evaluation.probe import ProbeSettings
    from featkit.evaluation.probe import probe as run_probe
    from featkit.evaluation.splits import parse_shots
    from featkit.results.io import summarize_results
    from featkit.store.writer import FEATURE_KINDS_HELP, is_feature_kind
    from featkit.workspace import find_stores, results_dir

    ws = resolve_workspace(workspace)
    logistic: dict[str, list[Any]] = {"max_iter": [logistic_max_iter]}
    if logistic_c.strip():
        logistic["c"] = _list(logistic_c, "--logistic-c", float)
    options: dict[str, dict[str, list[Any]]] = {
        "knn": {"k": _list(knn_k, "--knn-k", int), "temperature": _list(knn_t, "--knn-t", float)},
        "logistic": logistic,
        "balanced": {
            "base": _list(balanced_base, "--balanced-base", str),
            "beta": _list(balanced_beta, "--balanced-beta", float),
            "tau": _list(balanced_tau, "--balanced-tau", float),
        },
        "kmeans": {"n_init": [kmeans_n_init]},
    }
    specs = _specs(protocols, options)
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
