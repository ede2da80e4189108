"""A fine-tune must visibly learn on real digits, whatever the feature scale.

Before the fix the head-first probe was fitted to the unaugmented images and folded
into raw-feature weights of the order of 1/std: tuning started from a loss above
chance (ln 10 = 2.30) and, on a DINOv2 layout whose CLS features vary by 1e-5
(LayerScale 1e-5 at random init), reached losses above 100.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import tests.test_finetune as finetune_tests
from featkit.backbones import Backbone, create_backbone
from featkit.evaluation.splits import episodes
from featkit.metrics import balanced_accuracy
from featkit.tune import load_images, predict_logits, seeded
from featkit.tune.head import ClsOnly
from featkit.tune.run import FinetuneSettings, labelled_images, tune_episode
from tests.helpers import digits_folder

CHANCE = math.log(10)


# The fine-tune tests' one-thread rule and their seeded 2-block ViT-tiny (32 px).
_one_thread = finetune_tests._one_thread
vit_tiny = finetune_tests.tiny_backbone


def dinov2_layout() -> Backbone:
    """Random DINOv2-layout ViT (LayerScale 1e-5): CLS features that barely vary."""
    with seeded(0):
        return create_backbone(
            "timm:vit_small_patch14_dinov2",
            pretrained=False,
            image_size=28,
            model_kwargs=dict(depth=2, embed_dim=96, num_heads=2),
        )


def _tune(make: object, data: Path, method: str, steps: int | None, rows_every: int = 2):
    rows = labelled_images(data)
    base = make()  # type: ignore[operator]
    images = load_images(rows.root, rows.paths, base.preprocessing)
    n = len(rows.paths)
    train_rows, test_rows = np.arange(0, n, rows_every), np.arange(1, n, rows_every)
    features = predict_logits(ClsOnly(base), images.evals)
    settings = FinetuneSettings(method=method, steps=steps, precision="fp32")
    _, log, scores = tune_episode(
        make(),  # type: ignore[operator]
        images,
        rows.labels,
        train_rows,
        test_rows,
        settings,
        num_classes=10,
        seed=0,
        features=features,
    )
    return log.losses, balanced_accuracy(rows.labels[test_rows], scores.argmax(1))


@pytest.mark.parametrize("make", [vit_tiny, dinov2_layout], ids=["vit-tiny", "dinov2-layout"])
def test_last_block_training_loss_starts_and_ends_well_below_chance(
    tmp_path: Path, make: object
) -> None:
    data = digits_folder(tmp_path, per_class=8, size=32)
    losses, accuracy = _tune(make, data, "last-block", steps=32)
    # The head-first probe hands over a head that already fits the augmented views ...
    assert losses[0] < 0.8 * CHANCE, losses
    # ... and the tune never blows it up: on average and at the end it stays well below
    # chance (single steps of 8 or 32 augmented images are noisy).
    assert np.mean(losses) < CHANCE, losses
    assert np.mean(losses[-4:]) < 0.5 * CHANCE, losses
    assert accuracy > 0.3  # chance is 0.1; 40 test images


def test_lora_on_a_dinov2_layout_learns_instead_of_diverging(tmp_path: Path) -> None:
    data = digits_folder(tmp_path, per_class=8, size=32)
    losses, accuracy = _tune(dinov2_layout, data, "lora", steps=12)
    assert np.mean(losses) < CHANCE and np.mean(losses[-4:]) < 0.5 * CHANCE, losses
    assert accuracy > 0.3


# 12-20 s: outside the default run (pyproject deselects "benchmark"); run it with
# pytest -m benchmark tests/test_finetune_learns.py
@pytest.mark.slow
@pytest.mark.benchmark
def test_last_block_beats_the_frozen_linear_head_on_random_features(tmp_path: Path) -> None:
    """Random-init features are poor; tuning the last block must add to a frozen head.

    Long-tailed digits (imbalance 10, 60 → 6 images per class), the default schedule
    with 200 steps, averaged over the 10-shot episodes 0-1 and the ``all`` draw (measured:
    last-block 95.0, 74.9, 85.6 % balanced accuracy against the frozen head's 77.2, 80.0,
    80.6 %)."""
    data = digits_folder(tmp_path, per_class=60, size=32, imbalance=10)
    rows = labelled_images(data)
    base = vit_tiny()
    images = load_images(rows.root, rows.paths, base.preprocessing)
    features = predict_logits(ClsOnly(base), images.evals)
    scores: dict[str, list[float]] = {"linear": [], "last-block": []}
    for draw in episodes(images.paths, rows.labels, list(rows.splits), "10,all", 2, 0):
        for method, steps in (("linear", None), ("last-block", 200)):
            _, log, probs = tune_episode(
                vit_tiny(),
                images,
                rows.labels,
                draw.train,
                draw.test,
                FinetuneSettings(method=method, steps=steps, precision="fp32"),
                num_classes=10,
                seed=draw.episode,
                features=features,
            )
            scores[method].append(balanced_accuracy(rows.labels[draw.test], probs.argmax(1)))
            if method == "last-block":
                assert np.mean(log.losses[-10:]) < 0.5 * CHANCE, log.losses[-10:]
    assert np.mean(scores["last-block"]) > np.mean(scores["linear"]), scores


@pytest.mark.parametrize("make", [vit_tiny, dinov2_layout], ids=["vit-tiny", "dinov2-layout"])
def test_linear_head_agrees_with_l2_logistic_regression_on_standardised_features(
    tmp_path: Path, make: object
) -> None:
    """``finetune --method linear`` optimises what a logistic probe does.

    Both fit a multinomial linear model on the training images' z-scores (the head by
    AdamW on mini-batch cross-entropy with decoupled weight decay, the reference by
    lbfgs with an L2 penalty), so on the same frozen features they land within a few
    points, whatever the features' scale (the DINOv2 layout's CLS varies by 1e-5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    data = digits_folder(tmp_path, per_class=20, size=32)
    rows = labelled_images(data)
    base = make()  # type: ignore[operator]
    images = load_images(rows.root, rows.paths, base.preprocessing)
    features = predict_logits(ClsOnly(base), images.evals)
    x = features.double().numpy()
    n = len(rows.paths)
    gaps = []
    for offset in (0, 1):
        train_rows, test_rows = np.arange(offset, n, 2), np.arange(1 - offset, n, 2)
        _, _, probs = tune_episode(
            base,
            images,
            rows.labels,
            train_rows,
            test_rows,
            FinetuneSettings(method="linear"),
            num_classes=10,
            seed=0,
            features=features,
        )
        y_test = rows.labels[test_rows]
        head = balanced_accuracy(y_test, probs.argmax(1))
        scaler = StandardScaler().fit(x[train_rows])
        reference = LogisticRegression(C=1.0, max_iter=2000).fit(
            scaler.transform(x[train_rows]), rows.labels[train_rows]
        )
        logistic = balanced_accuracy(y_test, reference.predict(scaler.transform(x[test_rows])))
        assert head > 0.5 and logistic > 0.5, (head, logistic)  # chance is 0.1
        gaps.append(head - logistic)
    assert abs(np.mean(gaps)) < 0.05, gaps


def test_lora_learns_on_the_demo_backbone_and_keeps_up_with_the_frozen_head(
    tmp_path: Path,
) -> None:
    """A fine-tune must learn on featkit-tiny-dino, the demo's pretrained backbone.

    Its CLS token is far from invariant to crops (cosine 0.57 after a 1-px shift), so the
    head-first probe met augmented views at a loss above chance and LoRA ended at
    2.0-2.25 with less balanced accuracy than the frozen head. The tune now trains on
    views the frozen features recognise; it must end well below chance and not fall
    behind the frozen linear head on the test images."""
    from featkit.backbones.tiny_dino import create_tiny_dino

    data = digits_folder(tmp_path, per_class=16, size=32)
    rows = labelled_images(data)
    base = create_tiny_dino()
    images = load_images(rows.root, rows.paths, base.preprocessing)
    features = predict_logits(ClsOnly(base), images.evals)
    n = len(rows.paths)
    train_rows, test_rows = np.arange(0, n, 2), np.arange(1, n, 2)
    accuracy = {}
    for method, steps in (("linear", None), ("lora", 20)):
        _, log, probs = tune_episode(
            base,
            images,
            rows.labels,
            train_rows,
            test_rows,
            FinetuneSettings(method=method, steps=steps, precision="fp32"),
            num_classes=10,
            seed=0,
            features=features,
        )
        accuracy[method] = balanced_accuracy(rows.labels[test_rows], probs.argmax(1))
    assert np.mean(log.losses[-5:]) < 0.25 * CHANCE, log.losses
    assert accuracy["lora"] >= accuracy["linear"] - 0.03, accuracy


def test_augmentation_is_kept_only_where_the_untuned_features_recognise_its_views(
    tmp_path: Path,
) -> None:
    """The head-first probe judges one augmented view per training image: views it still
    classifies (here: the evaluation images themselves) are trained on; views it cannot
    (pure noise) give way to the unaugmented images."""
    import torch

    from featkit.tune.episode import _probe_head, _training_views
    from featkit.tune.head import norm_from
    from featkit.tune.losses import make_loss
    from featkit.tune.methods import create_classifier

    data = digits_folder(tmp_path, per_class=6, size=32)
    rows = labelled_images(data)
    base = vit_tiny()
    images = load_images(rows.root, rows.paths, base.preprocessing)
    y = torch.as_tensor(rows.labels)
    index = {id(s): i for i, s in enumerate(images.sources)}
    calls: list[str] = []

    def same(sources, _gen):  # the evaluation view of each image
        calls.append("same")
        return images.evals[[index[id(s)] for s in sources]]

    def noise(sources, gen):
        calls.append("noise")
        return torch.randn((len(sources), *images.evals.shape[1:]), generator=gen)

    settings = FinetuneSettings(method="lora")
    with seeded(0) as generator:
        classifier = create_classifier(base, 10, "lora", settings.method_options)
        loss = make_loss("ce", np.bincount(rows.labels, minlength=10))
        mean, std = _probe_head(classifier, images.evals, y, loss, settings, generator, "cpu")
        classifier.norm = norm_from(mean, std)
        views = {}
        for name, augment in (("same", same), ("noise", noise)):
            views[name] = _training_views(
                classifier,
                augment,  # type: ignore[arg-type]
                images.sources,
                images.evals,
                y,
                generator,
                device="cpu",
                precision="fp32",
                description="test",
            )
        calls.clear()
        batch = torch.arange(4)
        kept, dropped = views["same"](batch, generator), views["noise"](batch, generator)
    assert calls == ["same"]  # only the recognised augmentation is used while training
    assert torch.equal(dropped, images.evals[:4]) and torch.equal(kept, images.evals[:4])
