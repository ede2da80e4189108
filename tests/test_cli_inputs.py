"""Bad command-line input: exit code 2 and one line naming the option, before any work.

The table covers every rule of ``featkit.cli._common.RULES`` at least once, through a
command that has the option; a second test checks that the table misses no rule.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featkit.cli import app
from featkit.cli._common import RULES
from tests.helpers import digits_folder

runner = CliRunner()

# (command line, option the message must name); paths are filled in per test.
CASES: list[tuple[str, str]] = [
    ("probe --kmeans-n-init 0", "--kmeans-n-init"),
    ("probe --episodes 0", "--episodes"),
    ("probe --test-fraction 1.5", "--test-fraction"),
    ("probe --test-fraction 0", "--test-fraction"),
    ("probe --test-fraction nan", "--test-fraction"),
    ("probe --seed -1", "--seed"),
    ("probe --logistic-max-iter 0", "--logistic-max-iter"),
    ("finetune SRC --lr -1", "--lr"),
    ("finetune SRC --lr inf", "--lr"),
    ("finetune SRC --steps 0", "--steps"),
    ("finetune SRC --epochs 0", "--epochs"),
    ("finetune SRC --lora-r 0", "--lora-r"),
    ("finetune SRC --lora-alpha 0", "--lora-alpha"),
    ("finetune SRC --lora-dropout 1", "--lora-dropout"),
    ("finetune SRC --blocks 0", "--blocks"),
    ("finetune SRC --cpu-threads 0", "--cpu-threads"),
    ("finetune SRC --batch-size 0", "--batch-size"),
    ("finetune SRC --image-size 0", "--image-size"),
    ("report --out FILE", "--out"),
    ("pretrain SRC --epochs 1 --batch-size 0", "--batch-size"),
    ("pretrain SRC --epochs 0", "--epochs"),
    ("pretrain SRC --epochs 1 --out-dim 0", "--out-dim"),
    ("pretrain SRC --epochs 1 --hidden-dim 0", "--hidden-dim"),
    ("pretrain SRC --epochs 1 --bottleneck-dim 0", "--bottleneck-dim"),
    ("pretrain SRC --epochs 1 --local-crops -1", "--local-crops"),
    ("pretrain SRC --epochs 1 --koleo -0.5", "--koleo"),
    ("pretrain SRC --epochs 1 --warmup-epochs -1", "--warmup-epochs"),
    ("pretrain SRC --epochs 1 --teacher-temp 0", "--teacher-temp"),
    ("pretrain SRC --epochs 1 --teacher-temp-warmup -1", "--teacher-temp-warmup"),
    ("pretrain SRC --epochs 1 --momentum-teacher 1.5", "--momentum-teacher"),
    ("pretrain SRC --epochs 1 --lr 0", "--lr"),
    ("pretrain SRC --epochs 1 --workers -2", "--workers"),
    ("pretrain SRC --epochs 1 --out DIR", "--out"),
    ("extract SRC --model m --batch-size 0", "--batch-size"),
    ("extract SRC --model m --shard-size 0", "--shard-size"),
    ("extract SRC --model m --workers -1", "--workers"),
    ("extract SRC --model m --image-size -14", "--image-size"),
    ("extract SRC --model m --out DIR", "--out"),
    ("attention SRC --model m --threshold 0", "--threshold"),
    ("report --target 0", "--target"),
    ("report --target 120", "--target"),
    ("attention SRC --model m --threshold 1.5", "--threshold"),
    ("attention SRC --model m --out FILE", "--out"),
    ("demo --episodes 0", "--episodes"),
    ("demo --max-per-class 0", "--max-per-class"),
]


def _one_line_naming(result: object, option: str) -> None:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert option in errors[0], errors[0]


@pytest.mark.parametrize(("line", "option"), CASES, ids=[c[0] for c in CASES])
def test_bad_option_is_one_line_naming_it(line: str, option: str, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    fill = {"SRC": str(tmp_path / "src"), "FILE": str(tmp_path / "file.txt")}
    fill["DIR"] = str(tmp_path / "folder")
    args = [fill.get(word, word) for word in line.split()]
    result = runner.invoke(app, [*args, "-w", str(tmp_path / "ws")])
    _one_line_naming(result, option)
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "folder"]  # nothing written


def test_every_rule_is_in_the_table() -> None:
    tried = {option for _, option in CASES}
    assert {rule.flag for rule in RULES.values()} <= tried


def test_good_values_pass_the_rules() -> None:
    from featkit.cli._common import check_options

    check_options({"lr": 1e-4, "test_fraction": 0.3, "seed": 0, "workers": 0, "koleo": 0.0})
    check_options({"episodes": None, "momentum_teacher": 1.0, "threshold": 1.0})


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_pretrain_resume_with_a_pickled_state_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "images"  # refused before the images are even listed
    out = tmp_path / "dino.safetensors"
    state = out.with_name("dino.train.pt")
    state.write_bytes(pickle.dumps({"config": _Payload()}))
    tiny = json.dumps({"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2})
    args = ["pretrain", str(data), "--arch", "timm:vit_tiny_patch16_224", "--model-kwargs", tiny]
    fast = ["--image-size", "16", "--epochs", "1", "--out-dim", "32", "--hidden-dim", "32"]
    result = runner.invoke(app, [*args, *fast, "--out", str(out), "--resume"])
    _one_line_naming(result, "--resume")
    assert "dino.train.pt" in result.stderr and "DINO pretraining" not in result.stderr


@pytest.mark.parametrize("variant", ["payload", "plain-pickle"])
def test_hf_folder_with_pickled_weights_is_one_line(variant: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1}
    config.update(num_attention_heads=2, intermediate_size=64, image_size=28, patch_size=14)
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "pytorch_model.bin"
    if variant == "payload":
        torch.save({"x": _Payload()}, weights)
    else:
        weights.write_bytes(pickle.dumps({"x": _Payload()}))  # not even a torch zip
    images = digits_folder(tmp_path, per_class=1, size=16)
    result = runner.invoke(
        app, ["extract", str(images), "--model", f"hf:{folder}", "-w", str(tmp_path / "ws")]
    )
    _one_line_naming(result, "--model")
    assert not (tmp_path / "ws").exists() or not list((tmp_path / "ws").rglob("*.h5"))
