"""featkit.tune: methods, losses, schedule, loop and adapters on a tiny random ViT."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from featkit.backbones import Backbone, create_backbone
from featkit.errors import FeatkitError
from featkit.tune import (
    Augment,
    MethodOptions,
    TunedClassifier,
    count_parameters,
    create_classifier,
    load_tuned_backbone,
    load_tuned_classifier,
    make_loss,
    make_schedule,
    save_adapter,
    seeded,
    train,
)
from featkit.tune.train import Schedule, default_steps

SIZE = 32
NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny matrices on a shared 2-core machine: threads only add synchronisation.
    with threadpool_limits(limits=1):
        yield


def tiny_backbone(seed: int = 0) -> Backbone:
    """A 2-block ViT-tiny at 32 px; the same seed gives the same random weights."""
    with seeded(seed):
        return create_backbone(
            "timm:vit_tiny_patch16_224",
            pretrained=False,
            image_size=SIZE,
            model_kwargs=dict(depth=2),
        )


def batch_data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    y = torch.arange(n) % NUM_CLASSES
    # Give each class a visible signal so a few steps can lower the loss.
    x[:, 0] += y.view(-1, 1, 1).float()
    return x, y


def fit(
    classifier: TunedClassifier, steps: int = 4, lr: float = 1e-2, seed: int = 0
) -> list[float]:
    x, y = batch_data()
    loss = make_loss("ce", np.bincount(y.numpy(), minlength=NUM_CLASSES))
    schedule = make_schedule(len(y), lr=lr, batch_size=8, steps=steps)
    with seeded(seed) as generator:
        log = train(classifier, lambda idx, _g: x[idx], y, loss, schedule, generator)
    return log.losses


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# --------------------------------------------------------------------------- methods


def test_lora_trains_under_5_percent_and_leaves_base_weights_bit_identical() -> None:
    backbone = tiny_backbone()
    before = snapshot(backbone)
    with seeded(0):
        classifier = create_classifier(backbone, NUM_CLASSES, "lora")
    trainable, total = count_parameters(classifier)
    assert 0 < trainable < 0.05 * total
    assert all(
        ("lora_" in n) or n.startswith("head.")
        for n, p in classifier.named_parameters()
        if p.requires_grad
    )
    fit(classifier)
    after = {n.replace("base_layer.", ""): p for n, p in classifier.backbone.named_parameters()}
    for name, value in before.items():
        assert torch.equal(after[name], value), name  # bit-identical, not merely close
    lora_b = [p for n, p in classifier.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at 0: it trained


def test_last_block_changes_only_the_last_block_final_norm_and_head() -> None:
    backbone = tiny_backbone()
    with seeded(0):
        classifier = create_classifier(backbone, NUM_CLASSES, "last-block")
    before = snapshot(classifier)
    fit(classifier)
    changed = {n for n, p in classifier.named_parameters() if not torch.equal(p, before[n])}
    allowed = ("backbone.model.blocks.1.", "backbone.model.norm.", "head.")
    assert changed, "nothing trained"
    assert all(n.startswith(allowed) for n in changed), sorted(changed)
    assert any(n.startswith("backbone.model.blocks.1.") for n in changed)
    assert any(n.startswith("backbone.model.norm.") for n in changed)
    assert not any(n.startswith("backbone.model.blocks.0.") for n in changed)


def test_last_block_with_two_blocks_and_linear_freezes_the_backbone() -> None:
    with seeded(0):
        two = create_classifier(tiny_backbone(), NUM_CLASSES, "last-block", MethodOptions(blocks=2))
        linear = create_classifier(tiny_backbone(), NUM_CLASSES, "linear")
    assert any(p.requires_grad for p in two.backbone.model.blocks[0].parameters())
    assert not any(p.requires_grad for p in two.backbone.model.patch_embed.parameters())
    assert [n for n, p in linear.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]


def test_unknown_method_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(FeatkitError, match="method 'bitfit' is not known; expected one of"):
        create_classifier(tiny_backbone(), NUM_CLASSES, "bitfit")
    with pytest.raises(FeatkitError, match="--blocks: expected 1 to 2"):
        create_classifier(tiny_backbone(), NUM_CLASSES, "last-block", MethodOptions(blocks=5))
    with pytest.raises(FeatkitError, match="at least 2 classes"):
        create_classifier(tiny_backbone(), 1, "linear")


# --------------------------------------------------------------------------- losses


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def test_class_balanced_loss_weights_equal_the_effective_number_formula() -> None:
    counts = np.array([50, 10, 2, 0])
    beta = 0.99
    # Cui et al. 2019 by hand: w_c = (1 − β) / (1 − β^n_c), scaled to sum to the number
    # of present classes; an empty class gets 0.
    raw = np.array([(1 - beta) / (1 - beta**n) if n else 0.0 for n in counts])
    weights = raw * 3 / raw.sum()
    logits = np.random.default_rng(0).normal(size=(6, 4))
    targets = np.array([0, 0, 1, 2, 2, 1])
    nll = -_log_softmax(logits)[np.arange(6), targets]
    expected = (weights[targets] * nll).sum() / weights[targets].sum()
    loss = make_loss("class-balanced", counts, beta=beta)
    got = loss(torch.tensor(logits), torch.tensor(targets))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert weights[2] > weights[1] > weights[0]  # rarer classes weigh more


def test_logit_adjusted_and_plain_losses_equal_hand_computation() -> None:
    counts = np.array([30, 6, 4])
    tau = 1.5
    logits = np.random.default_rng(1).normal(size=(5, 3))
    targets = np.array([0, 1, 2, 2, 0])
    shifted = logits + tau * np.log(counts / counts.sum())
    expected = -_log_softmax(shifted)[np.arange(5), targets].mean()
    got = make_loss("logit-adjusted", counts, tau=tau)(torch.tensor(logits), torch.tensor(targets))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = -_log_softmax(logits)[np.arange(5), targets].mean()
    got = make_loss("ce", counts)(torch.tensor(logits), torch.tensor(targets))
    assert float(got) == pytest.approx(plain, rel=1e-6)
    with pytest.raises(FeatkitError, match="loss 'focal' is not known"):
        make_loss("focal", counts)


# --------------------------------------------------------------------------- schedule, loop


def test_warmup_then_cosine_schedule() -> None:
    s = Schedule(steps=10, batch_size=4, lr=1.0, warmup_steps=2)
    assert [s.lr_at(i) for i in range(2)] == [0.5, 1.0]
    # after the warm-up: 0.5·(1 + cos(π·t/8)) for t = 0 … 7
    for step in range(2, 10):
        assert s.lr_at(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - 2) / 8)))
    assert make_schedule(100, lr=1e-3, batch_size=10, epochs=3).steps == 30
    assert make_schedule(100, lr=1e-3, steps=7).steps == 7
    assert make_schedule(5, lr=1e-3, batch_size=32).batch_size == 5


def test_default_schedule_scales_with_the_data() -> None:
    assert default_steps(10, 32) == 50  # 1-shot × 10 classes: 50 epochs
    assert default_steps(300, 32) == 100  # 10 epochs of 10 steps
    assert default_steps(5000, 32) == 1570  # 10 epochs
    with pytest.raises(FeatkitError, match="--steps: expected >= 1, got 0"):
        make_schedule(10, lr=1e-3, steps=0)


def test_training_is_deterministic_for_a_seed() -> None:
    runs = []
    for seed in (0, 0, 1):
        with seeded(seed):
            classifier = create_classifier(tiny_backbone(), NUM_CLASSES, "lora")
        runs.append(fit(classifier, steps=3, seed=seed))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_seeded_leaves_the_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected)


def test_augment_is_seeded_and_keeps_the_input_size() -> None:
    backbone = tiny_backbone()
    augment = Augment(backbone.preprocessing)
    source = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    a = augment([source, source], torch.Generator().manual_seed(0))
    b = augment([source, source], torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # two draws differ
    # A flip-free, full-area, square crop of a square image is just the resize.
    still = Augment(backbone.preprocessing, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    square = torch.full((3, 40, 40), 255, dtype=torch.uint8)
    out = still([square], torch.Generator())
    mean = torch.tensor(backbone.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(3, 1, 1)
    assert torch.allclose(out[0], ((1 - mean) / std).expand(3, SIZE, SIZE), atol=1e-5)


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("method", ["lora", "last-block", "linear"])
def test_saved_adapter_reloads_to_the_same_predictions(tmp_path: Path, method: str) -> None:
    with seeded(0):
        classifier = create_classifier(tiny_backbone(), NUM_CLASSES, method)
    fit(classifier, steps=3)
    x, _ = batch_data(6)
    with torch.inference_mode():
        expected = classifier.eval()(x)
        expected_cls = classifier.backbone(x).cls
    folder = save_adapter(
        classifier,
        tmp_path / "adapter",
        method=method,
        options=MethodOptions(),
        label_names=["a", "b", "c", "d"],
    )
    reloaded = load_tuned_classifier(tiny_backbone(), folder)
    with torch.inference_mode():
        assert torch.equal(reloaded(x), expected)
    # For extraction: LoRA folded into the weights gives the same features (to rounding).
    tuned = load_tuned_backbone(tiny_backbone(), folder)
    assert not any("lora_" in n for n, _ in tuned.named_parameters())
    with torch.inference_mode():
        assert torch.allclose(tuned(x).cls, expected_cls, atol=1e-5)
    if method == "lora":  # only the adapter is stored, never the base weights
        stored = (folder / "adapter.safetensors").stat().st_size
        assert stored < 0.1 * 4 * count_parameters(classifier)[1]


def test_adapter_refuses_another_base_and_missing_folders(tmp_path: Path) -> None:
    with seeded(0):
        classifier = create_classifier(tiny_backbone(), NUM_CLASSES, "lora")
    folder = save_adapter(
        classifier, tmp_path / "a", method="lora", options=MethodOptions(), label_names=list("abcd")
    )
    with pytest.raises(FeatkitError, match="frozen weights differ"):
        load_tuned_backbone(tiny_backbone(seed=1), folder)
    with pytest.raises(FeatkitError, match="expected an adapter folder"):
        load_tuned_backbone(tiny_backbone(), tmp_path / "nothing")
    other = create_backbone(
        "timm:vit_small_patch16_224", pretrained=False, image_size=SIZE, model_kwargs=dict(depth=2)
    )
    with pytest.raises(FeatkitError, match="tuned on model 'timm:vit_tiny_patch16_224'"):
        load_tuned_backbone(other, folder)


# --------------------------------------------------------------------------- other families

HF_MODELS = {
    "dinov2": ("Dinov2Config", "Dinov2Model", {}),
    "dinov3": ("DINOv3ViTConfig", "DINOv3ViTModel", {"num_register_tokens": 4}),
}


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
@pytest.mark.parametrize("method", ["lora", "last-block"])
def test_hugging_face_dinov2_and_dinov3_tune_their_own_modules(
    tmp_path: Path, kind: str, method: str
) -> None:
    import transformers

    config_cls, model_cls, extra = HF_MODELS[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
        **extra,
    )
    getattr(transformers, model_cls)(config).save_pretrained(tmp_path)
    backbone = create_backbone(f"hf:{tmp_path}")
    before = snapshot(backbone)
    with seeded(0):
        classifier = create_classifier(backbone, NUM_CLASSES, method)
    fit(classifier, steps=2)
    tuned = {n for n, p in classifier.named_parameters() if p.requires_grad} - {
        "head.weight",
        "head.bias",
    }
    after = {n.replace("base_layer.", ""): p for n, p in classifier.backbone.named_parameters()}
    changed = {n for n, p in before.items() if not torch.equal(after[n], p)}
    if method == "lora":
        # LoRA sits on the attention projections the backbone names, and only there.
        targets = backbone.lora_targets
        assert targets and all(n.split(".lora_")[0].endswith(targets) for n in tuned)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in tuned} == set(targets)
        assert not changed
    else:
        last = {id(p) for p in backbone.blocks[-1].parameters()}
        last |= {id(p) for p in backbone.final_norm.parameters()}
        owners = {n for n, p in classifier.backbone.named_parameters() if id(p) in last}
        assert changed and {f"backbone.{n}" for n in changed} <= tuned
        assert {n.removeprefix("backbone.") for n in tuned} == owners
