"""The `pixels` baseline and the random-init baseline produce features and stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featkit.backbones import create_backbone, list_backbones
from featkit.errors import FeatkitError
from tests.helpers import digits_folder


def test_pixels_features_are_the_resized_image() -> None:
    backbone = create_backbone("pixels", image_size=4)
    assert "pixels" in list_backbones()
    assert backbone.embed_dim == 48 and backbone.patch_size == 4
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    out = backbone(backbone.preprocessing.transform()(image)[None])
    # Channel-first raw values in [0, 1] of PIL's bilinear resize, nothing else.
    resized = np.asarray(image.resize((4, 4), Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_allclose(
        out.cls[0].numpy() * 255, resized.transpose(2, 0, 1).ravel(), atol=0.5
    )
    flat = backbone(
        backbone.preprocessing.transform()(Image.new("RGB", (8, 8), (51, 102, 255)))[None]
    )
    np.testing.assert_allclose(
        flat.cls[0].numpy().reshape(3, 16), [[0.2] * 16, [0.4] * 16, [1.0] * 16], atol=1e-6
    )
    assert out.patches.shape == (1, 1, 1, 48)
    torch.testing.assert_close(out.patches.mean(dim=(1, 2)), out.cls)


def test_pixels_default_size_and_no_weights(tmp_path: Path) -> None:
    backbone = create_backbone("pixels")
    assert backbone.preprocessing.crop == 32 and backbone.embed_dim == 3 * 32 * 32
    assert backbone.weights_sha256 is None
    assert backbone(torch.rand(3, 3, 32, 32)).cls.shape == (3, 3072)
    with pytest.raises(FeatkitError, match="no weights"):
        create_backbone("pixels", weights=tmp_path / "w.safetensors")


def test_pixels_and_random_init_produce_stores(tmp_path: Path) -> None:
    from featkit.data.images import discover
    from featkit.extraction.run import extract
    from featkit.store.reader import open_store

    data = discover(digits_folder(tmp_path, per_class=2, size=16))
    torch.manual_seed(0)
    random_vit = create_backbone(
        "featkit-tiny-dino", pretrained=False, image_size=16, model_kwargs={"depth": 1}
    )
    assert random_vit.weights_sha256 is None
    # Grey digits: pixels keeps one channel, 16 * 16 values.
    for backbone, dim in ((create_backbone("pixels", image_size=16), 256), (random_vit, 128)):
        path = extract(data, backbone, tmp_path / f"{backbone.name}.h5").path
        with open_store(path) as store:
            features = store.features("cls")
            assert features.shape == (20, dim) and np.isfinite(features).all()
            # Images differ, so their features must too.
            assert np.unique(features.round(5), axis=0).shape[0] > 10
