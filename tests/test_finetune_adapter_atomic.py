"""Adapters are written whole, checked on load, and never overwrite another run's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.test_finetune as finetune_tests
from featkit.errors import FeatkitError
from featkit.evaluation.splits import Sweep
from featkit.tune import (
    MethodOptions,
    create_classifier,
    load_tuned_classifier,
    read_adapter_settings,
    save_adapter,
    seeded,
)
from featkit.tune import adapter as adapter_module
from featkit.tune.run import FinetuneSettings, adapter_dir

SIZE = 32


# The fine-tune tests' one-thread rule and their seeded 2-block ViT-tiny.
_one_thread = finetune_tests._one_thread
tiny_backbone = finetune_tests.tiny_backbone


def saved(folder: Path, head_value: float) -> torch.Tensor:
    """Save a linear adapter whose head weights all equal ``head_value``; return its logits."""
    with seeded(0):
        classifier = create_classifier(tiny_backbone(), 3, "linear")
    with torch.no_grad():
        classifier.head.weight.fill_(head_value)
    save_adapter(
        classifier, folder, method="linear", options=MethodOptions(), label_names=["a", "b", "c"]
    )
    return classifier.head.weight.detach().clone()


def test_a_failure_between_weights_and_settings_leaves_the_old_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "episode-0"
    old = saved(folder, 0.25)

    def killed(path: Path, text: str) -> None:
        raise OSError("killed between the weights and the settings")

    monkeypatch.setattr(adapter_module, "_write_settings", killed)
    with pytest.raises(OSError, match="killed"):
        saved(folder, 0.75)
    # The old adapter is intact, loads, and no staging folder is left behind.
    reloaded = load_tuned_classifier(tiny_backbone(), folder)
    assert torch.equal(reloaded.head.weight, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-0"]


def test_a_kill_between_the_two_renames_names_the_adapter_left_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "episode-0"
    saved(folder, 0.25)
    real_replace = adapter_module.os.replace
    calls: list[tuple[Path, Path]] = []

    def replace(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder was moved aside; the new one never arrives
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(adapter_module.os, "replace", replace)
    with pytest.raises(OSError):
        saved(folder, 0.75)
    with pytest.raises(FeatkitError, match=r"an earlier adapter was left at .*\.old"):
        read_adapter_settings(folder)
    aside = calls[0][1]
    assert load_tuned_classifier(tiny_backbone(), Path(aside)).head.weight.eq(0.25).all()


def test_weights_that_do_not_match_the_settings_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    saved(first, 0.25)
    saved(second, 0.75)
    # New weights beside old settings: what separate file renames left after a kill.
    (first / "adapter.safetensors").write_bytes((second / "adapter.safetensors").read_bytes())
    with pytest.raises(FeatkitError, match="expected weights with sha256") as error:
        load_tuned_classifier(tiny_backbone(), first)
    assert "\n" not in str(error.value)
    # A flipped byte is refused the same way (and so is the fingerprint for extract).
    data = bytearray((second / "adapter.safetensors").read_bytes())
    data[-1] ^= 0x01
    (second / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(FeatkitError, match="the adapter is damaged or mixed"):
        adapter_module.adapter_fingerprint(second)


def test_adapter_folders_are_keyed_by_everything_that_defines_them(tmp_path: Path) -> None:
    lora, linear = FinetuneSettings(method="lora"), FinetuneSettings(method="linear")
    base = dict(workspace=tmp_path, dataset="digits", model="m", sweep=Sweep())
    reference = adapter_dir(**base, settings=lora, shots="10", episode=0)
    variants = [
        adapter_dir(**{**base, "sweep": Sweep(seed=1)}, settings=lora, shots="10", episode=0),
        adapter_dir(
            **{**base, "sweep": Sweep(test_fraction=0.3)}, settings=lora, shots="10", episode=0
        ),
        adapter_dir(**base, settings=lora, shots="5", episode=0),
        adapter_dir(**base, settings=lora, shots="10", episode=1),
        adapter_dir(**base, settings=linear, shots="10", episode=0),
        adapter_dir(**base, settings=FinetuneSettings(lr=3e-4), shots="10", episode=0),
    ]
    assert len({reference, *variants}) == 1 + len(variants)
    assert adapter_dir(**base, settings=lora, shots="10", episode=0) == reference  # stable
