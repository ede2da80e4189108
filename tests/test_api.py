"""The public API: `featkit.<verb>` names, and the Python example against the CLI."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import featkit
from featkit.cli import app

VERBS = (
    "discover",
    "create_backbone",
    "extract",
    "open_store",
    "probe",
    "finetune",
    "write_report",
    "list_backbones",
    "list_protocols",
    "read_results",
    "create_protocol",
)
FAST = ["knn", "prototype"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


@pytest.mark.parametrize("name", VERBS)
def test_every_verb_is_a_function_with_keyword_defaults(name: str) -> None:
    # Through the lazy table: `featkit.finetune` is shadowed by the featkit/finetune.py
    # module once something imports it, until that module moves into featkit.tune.
    verb = featkit.__getattr__(name)
    assert inspect.isfunction(verb), f"featkit.{name} is {verb!r}"
    assert name in featkit.__all__
    required = [
        p.name
        for p in inspect.signature(verb).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    ]
    assert len(required) <= 2, f"featkit.{name} needs {required}"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = featkit.nope  # type: ignore[attr-defined]


def _example() -> object:
    spec = importlib.util.spec_from_file_location("python_api_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # two extractions and two probe sweeps: about 10 s on 2 cores
def test_the_example_prints_what_the_cli_computes(tmp_path: Path) -> None:
    """The example's numbers are the CLI's: probe recomputed by `featkit probe --force`
    on the same stores gives the same means, and its table shows them."""
    example = _example()
    shown = example.main(tmp_path, max_per_class=6, episodes=1, protocols=FAST)  # type: ignore[attr-defined]
    assert set(shown["model"]) == {"featkit-tiny-dino", "pixels"}
    assert set(shown["shots"]) == {"1", "5", "all"}

    args = ["probe", "-w", str(tmp_path), "--shots", "1,5,all", "--episodes", "1", "--force"]
    args += ["--protocols", ",".join(FAST)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = featkit.read_results(tmp_path, summary=True)
    cli = cli[cli["metric"] == "balanced_accuracy"].reset_index(drop=True)
    keys = ["model", "protocol", "params", "shots"]
    merged = shown.merge(cli, on=keys, suffixes=("_example", "_cli"))
    assert len(merged) == len(shown) == len(cli)
    pd.testing.assert_series_equal(
        merged["mean_example"], merged["mean_cli"], check_names=False, rtol=0, atol=1e-12
    )
    for mean in shown["mean"]:
        assert f"{100 * mean:.1f}" in result.stdout


def test_extract_names_the_random_twin_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from featkit.extraction import run

    calls: list[tuple] = []
    monkeypatch.setattr(run, "extract", lambda *args: calls.append(args))
    data = tmp_path / "digits"
    featkit.write_digits(data, max_per_class=2, size=8)
    before = torch.get_rng_state()
    featkit.extract(data, "pixels", workspace=tmp_path, random_init=True)
    assert torch.equal(torch.get_rng_state(), before)
    _, backbone, target, settings, _ = calls[0]
    assert target == tmp_path / "digits" / "pixels-random.h5"
    assert settings.model_name == "pixels-random" and backbone.name == "pixels"
