"""``featkit models``: every official name, supported or not, with its facts."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featkit.backbones import HUB_MODELS, create_backbone
from featkit.cli import app
from featkit.errors import FeatkitError


def test_models_lists_every_hub_name_with_its_facts_as_json() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {row["name"]: row for row in data["models"]}
    assert set(HUB_MODELS) <= set(rows)
    # Independent truth: the model cards (DINOv2 ViT-g/14: width 1536, 40 blocks, 4 registers).
    g = rows["dinov2_vitg14_reg"]
    assert (g["family"], g["patch_size"], g["embed_dim"], g["depth"], g["registers"]) == (
        "DINOv2 + registers",
        14,
        1536,
        40,
        4,
    )
    assert rows["dinov3_vits16"]["weights_cached"] is None  # conftest: empty offline cache
    assert not rows["dinov3_convnext_tiny"]["supported"]
    assert "no CLS token" in rows["dinov3_convnext_tiny"]["note"]
    assert "featkit-tiny-dino" in data["other_names"]


def test_models_table_and_extract_help_point_to_it() -> None:
    result = CliRunner().invoke(app, ["models", "--no-cache-check"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in HUB_MODELS:
        assert name in result.stdout
    assert "dinov3_convnext_base" in result.stdout and "not supported" in result.stdout
    help_text = CliRunner().invoke(app, ["extract", "--help"], env={"COLUMNS": "200"}).stdout
    assert "featkit models" in help_text


def test_unsupported_official_name_says_why() -> None:
    with pytest.raises(FeatkitError, match=r"dinov3_convnext_small is not supported: .*CLS"):
        create_backbone("dinov3_convnext_small", pretrained=False)
