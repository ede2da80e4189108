"""featkit finetune end to end on real digits: same draws as the probe, same tables."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from featkit.backbones import Backbone, create_backbone
from featkit.cli import app
from featkit.data.images import discover
from featkit.errors import FeatkitError
from featkit.evaluation.probe import ProbeSettings, ProtocolSpec, load_store, probe
from featkit.evaluation.splits import Sweep, episodes, parse_shots
from featkit.extraction.run import ExtractSettings, extract
from featkit.results.io import read_results, read_summary
from featkit.tune import load_images, load_tuned_backbone, seeded
from featkit.tune.run import FinetuneSettings, labelled_images, run_finetune, tune_episode
from tests.helpers import digits_folder

MODEL = "timm:vit_tiny_patch16_224"
SIZE = 32
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matrices on a shared 2-core machine: threads only add synchronisation.
    with threadpool_limits(limits=1):
        yield


def tiny_backbone() -> Backbone:
    """Random 2-block ViT-tiny; seeded, so every call gives the same weights."""
    with seeded(0):
        return create_backbone(MODEL, pretrained=False, image_size=SIZE, model_kwargs=dict(depth=2))


@dataclass
class Setup:
    data: Path  # digits image folder
    store: Path  # its store, extracted with tiny_backbone()
    workspace: Path  # holds the logistic probe's rows for shots 1, 5, all


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("ft")
    data = digits_folder(root, per_class=30, size=SIZE)
    workspace = root / "ws"
    store = workspace / "digits" / "tiny.h5"
    with threadpool_limits(limits=1):
        extract(
            discover(data),
            tiny_backbone(),
            store,
            ExtractSettings(precision="fp32", workers=0, model_name=MODEL),
        )
        settings = ProbeSettings(
            protocols=(ProtocolSpec.of("logistic"),), shots=parse_shots("1,5,all"), episodes=2
        )
        probe([store], settings, workspace=workspace)
    return Setup(data, store, workspace)


def test_linear_from_a_data_folder_uses_the_probes_draws_and_agrees_with_logistic(
    setup: Setup,
) -> None:
    # From the image folder (its own decoding and discovery), not from the store ...
    run = run_finetune(
        labelled_images(setup.data),
        tiny_backbone(),
        FinetuneSettings(method="linear", precision="fp32"),
        Sweep(parse_shots("1,5,all"), episodes=2),
        workspace=setup.workspace,
    )
    # ... the draws are exactly those the probe makes from the store's rows.
    rows = load_store(setup.store, ["cls"])
    draws = episodes(rows.paths, rows.labels, rows.splits, "1,5,all", 2, 0)
    expected = {
        (str(d.shots), d.episode): (
            [rows.paths[i] for i in d.train],
            [rows.paths[i] for i in d.test],
        )
        for d in draws
    }
    got = {(o.shots, o.episode): (o.train_paths, o.test_paths) for o in run.outcomes}
    assert got == expected
    # The same images show in the shared tables: equal counts per draw, and the head
    # on frozen CLS features lands within a few points of the logistic probe.
    table = read_results(setup.workspace)
    bal = table[table.metric == "balanced_accuracy"]
    columns = ["shots", "episode", "n_train", "n_test", "effective_shots"]
    linear = bal[bal.protocol == "finetune-linear"]
    logistic = bal[bal.protocol == "logistic"]
    assert len(linear) == 5
    assert (
        linear[columns].sort_values(columns).to_numpy().tolist()
        == logistic[columns].sort_values(columns).to_numpy().tolist()
    )
    assert set(linear.dataset) == set(logistic.dataset) and set(linear.model) == {MODEL}
    means = bal.groupby(["protocol", "shots"]).value.mean()
    for shots in ("5", "all"):
        assert abs(means["finetune-linear", shots] - means["logistic", shots]) < 0.08, means
    assert means["finetune-linear", "all"] > 0.5  # far above chance (0.1)
    summary = read_summary(setup.workspace)
    assert {"finetune-linear", "logistic"} <= set(summary.protocol)


def test_lora_training_loss_falls_on_real_digits(setup: Setup) -> None:
    base = tiny_backbone()
    rows = labelled_images(setup.data)
    images = load_images(rows.root, rows.paths, base.preprocessing)
    train_rows = np.arange(0, len(rows.paths), 2)
    test_rows = np.arange(1, len(rows.paths), 2)
    settings = FinetuneSettings(method="lora", lr=3e-3, steps=24, batch_size=32, precision="fp32")
    _, log, scores = tune_episode(
        base,
        images,
        rows.labels,
        train_rows,
        test_rows,
        settings,
        num_classes=10,
        seed=0,
    )
    # The head starts as a probe on the untuned features (LP-FT), so tuning starts well
    # below chance (ln 10 = 2.30) and stays there (tests/test_finetune_learns.py has more).
    assert np.mean(log.losses[:4]) < np.log(10), log.losses
    assert np.mean(log.losses[-4:]) < np.log(10), log.losses
    assert scores.shape == (len(test_rows), 10)
    assert np.allclose(scores.sum(1), 1, atol=1e-5)
    # the base given in stays untouched: each episode tunes its own copy
    assert not any("lora_" in n for n, _ in base.named_parameters())


def test_cli_extract_probe_finetune_share_the_tables(tmp_path: Path) -> None:
    """The new user's path: extract, probe, finetune the store; rows sit side by side."""
    data = digits_folder(tmp_path, per_class=4, size=SIZE)
    ws = str(tmp_path / "ws")
    commands = [
        ["extract", str(data), "--model", MODEL, "--random-init", "--image-size", str(SIZE),
         "--precision", "fp32", "--workers", "0", "-w", ws],
        ["probe", "--protocols", "logistic", "--shots", "1", "--episodes", "1", "-w", ws],
    ]  # fmt: skip
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    store = next((tmp_path / "ws").glob("*/*.h5"))
    tune = ["finetune", str(store), "--data", str(data), "--method", "lora", "--shots", "1",
            "--episodes", "1", "--steps", "2", "--precision", "fp32", "--no-flip",
            "-w", ws]  # fmt: skip
    result = runner.invoke(app, tune)
    assert result.exit_code == 0, result.output
    assert "trainable parameters:" in result.output and "total time" in result.output
    assert "1 episode(s) per few-shot setting" in result.output
    table = read_results(Path(ws))
    assert set(table.protocol) == {"logistic", "finetune-lora"}
    assert set(table.model) == {f"{MODEL}-random"} and set(table.store) == {str(store)}
    lora = table[table.protocol == "finetune-lora"]
    assert set(lora.metric) >= {"accuracy", "balanced_accuracy", "macro_f1"}
    assert set(lora.params) == {"alpha=8;batch=32;dropout=0.1;loss=ce;lr=0.001;r=8;steps=2"}
    columns = ["shots", "episode", "n_train", "n_test", "effective_shots"]
    assert len(table.drop_duplicates(columns)) == 1  # the same draw for both
    summary = read_summary(Path(ws))
    assert {"logistic", "finetune-lora"} <= set(summary.protocol)
    # the adapter reloads onto the same (seeded) random base
    (adapter,) = (tmp_path / "ws" / "finetune").rglob("adapter.json")
    with seeded(0):
        base = create_backbone(MODEL, pretrained=False, image_size=SIZE)
    assert load_tuned_backbone(base, adapter.parent).name == MODEL
    # rerunning replaces the run's rows instead of appending them twice
    result = runner.invoke(app, [*tune, "--no-save-adapters"])
    assert result.exit_code == 0, result.output
    assert len(read_results(Path(ws))) == len(table)


def test_episodes_default_to_the_probes() -> None:
    """Tuned and probed cells average over the same number of draws."""
    import inspect

    from featkit.cli.finetune import finetune_command
    from featkit.evaluation import splits
    from featkit.evaluation.probe import ProbeSettings

    option = inspect.signature(finetune_command).parameters["episodes"].default
    assert option.default == splits.DEFAULT_EPISODES == 10
    assert Sweep().episodes == ProbeSettings().episodes == splits.DEFAULT_EPISODES
    assert inspect.signature(run_finetune).parameters["sweep"].default == Sweep()
    # Both stages draw from one Sweep: equal settings give equal sweeps.
    probe_settings = ProbeSettings(shots=parse_shots("1,all"), episodes=3, seed=2)
    assert probe_settings.sweep == Sweep(parse_shots("1,all"), 3, 2)


def test_cli_help_has_examples() -> None:
    result = runner.invoke(app, ["finetune", "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output and "--lora-r" in result.output


def test_bad_input_gives_one_clear_line(setup: Setup, tmp_path: Path) -> None:
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for image in sorted(setup.data.glob("*/*.png"))[:4]:
        (unlabelled / image.name).write_bytes(image.read_bytes())
    cases = [
        (["finetune", str(unlabelled), "--model", MODEL], "expected labelled images"),
        (["finetune", str(setup.store)], "expected --data FOLDER"),
        (
            ["finetune", str(setup.store), "--data", str(setup.data), "--model", "dinov2_vits14"],
            "expected the store's model",
        ),
        (["finetune", str(setup.data)], "expected --model NAME"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "-w", str(tmp_path / "ws")])
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["finetune", str(setup.data), "--model", MODEL, "--method", "x"])
    assert result.exit_code == 2 and "lora" in result.output  # the choices are named
    with pytest.raises(FeatkitError, match="fine-tune method 'bitfit' is not known"):
        FinetuneSettings(method="bitfit")
    with pytest.raises(FeatkitError, match="loss 'focal' is not known"):
        FinetuneSettings(loss="focal")


def test_other_weights_than_the_stores_are_refused(setup: Setup) -> None:
    with seeded(1):
        other = create_backbone(
            MODEL, pretrained=False, image_size=SIZE, model_kwargs=dict(depth=2)
        )
    with pytest.raises(FeatkitError, match="expected the weights the store was extracted with"):
        run_finetune(labelled_images(setup.store, setup.data), other, FinetuneSettings())
