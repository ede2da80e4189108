"""``pixels-grey``: one channel for grey images, a third of the width."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from featkit.backbones import create_backbone, list_backbones


def test_pixels_grey_is_the_grey_value_and_a_third_of_the_width() -> None:
    grey = create_backbone("pixels-grey", image_size=4)
    rgb = create_backbone("pixels", image_size=4)
    assert "pixels-grey" in list_backbones()
    assert grey.embed_dim == 16 and rgb.embed_dim == 48
    values = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    image = Image.fromarray(values).convert("RGB")  # a grey image as featkit decodes it
    batch = grey.preprocessing.transform()(image)[None]
    out, full = grey(batch), rgb(batch)
    # The one channel equals each of the three identical RGB channels: nothing is lost.
    for channel in full.cls[0].reshape(3, 16):
        torch.testing.assert_close(out.cls[0], channel)
    resized = np.asarray(Image.fromarray(values).resize((4, 4), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(out.cls[0].numpy() * 255, resized.ravel(), atol=0.5)
    assert out.patches.shape == (1, 1, 1, 16)
    colour = torch.zeros(1, 3, 4, 4)
    colour[:, 0] = 0.9  # pure red: the grey feature is the mean of the channels
    torch.testing.assert_close(grey(colour).cls, torch.full((1, 16), 0.3))
