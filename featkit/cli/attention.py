"""`featkit attention`: DINO's last-block attention maps, masks, point similarity, PCA colours."""

from __future__ import annotations

from pathlib import Path

import typer

from featkit.cli._common import (
    console,
    progress_bars,
    safe_loads,
    user_errors,
)
from featkit.cli._options import (
    WORKSPACE_OPTION,
    device_option,
    image_size_option,
    model_option,
    random_init_option,
    resolve_workspace,
    weights_option,
)
from featkit.errors import FeatkitError

ORDER = 50


def _parse_point(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise FeatkitError(
            f"--point: expected pixel coordinates as X,Y (e.g. 120,80), got {text!r}"
        ) from None


@user_errors
def attention(
    images: list[Path] = typer.Argument(
        ..., help="Image files to draw maps for.", show_default=False
    ),
    model: str = model_option(),
    weights: Path | None = weights_option(),
    image_size: int | None = image_size_option(),
    random_init: bool = random_init_option("Its attention is noise."),
    threshold: float = typer.Option(
        0.6, "--threshold", help="Attention mass each head's mask keeps (DINO uses 0.6)."
    ),
    point: str | None = typer.Option(
        None, "--point", help="X,Y pixel of the original image: similarity of its patch to all."
    ),
    pca: bool = typer.Option(False, "--pca", help="Also draw the first 3 PCs of patch features."),
    device: str = device_option(),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the PNGs (default: WORKSPACE/attention)."
    ),
    workspace: Path | None = WORKSPACE_OPTION,
) -> None:
    """Draw the last block's CLS attention per head, their mean, and DINO's masks.

    Attention weights are recomputed for the last block, so models with fused
    attention and with register tokens work (registers are left out of the maps).
    Masks keep the patches holding --threshold of each head's attention mass.
    --point adds the cosine similarity of one patch to every patch; --pca the
    first three principal components of the patch features as RGB.
    Writes IMAGE_attention.png (and IMAGE_point.png, IMAGE_pca.png).

    Examples:

        featkit attention cat.jpg --model dinov2_vits14_reg

        featkit attention a.png b.png --model dino_vits16 --pca

        featkit attention cat.jpg --model dinov3_vits16 --point 120,80
    """
    import torch

    from featkit.backbones.naming import build_backbone
    from featkit.viz.attention_pictures import AttentionSettings, write_attention_maps

    missing = [p for p in images if not p.is_file()]
    if missing:
        raise FeatkitError(f"image {missing[0]}: expected an image file, found nothing")
    if not 0.0 < threshold <= 1.0:
        raise FeatkitError(f"--threshold: expected a fraction in (0, 1], got {threshold}")
    settings = AttentionSettings(threshold=threshold, point=_parse_point(point), pca=pca)
    if settings.point is not None:
        from PIL import Image

        from featkit.viz.patches import check_point

        # Fail before the (slow) model is built: image headers give the sizes.
        for path in images:
            try:
                with Image.open(path) as image:
                    size = image.size
            except OSError:
                continue  # unreadable images are reported by the loader with their reason
            check_point(settings.point, size)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with safe_loads("--model", model):
        backbone = build_backbone(
            model, weights=weights, image_size=image_size, pretrained=not random_init
        )
    target = out_dir if out_dir is not None else resolve_workspace(workspace) / "attention"
    prep = backbone.preprocessing
    with progress_bars() as progress:
        written = write_attention_maps(
            backbone.model,
            prep.transform(),
            prep.resize,
            prep.crop,
            images,
            target,
            settings,
            device=device,
            progress=progress,
        )
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("attention")(attention)
