"""torchrun extraction: two gloo processes give the single-process store, even after a kill.

The reference is a single-process ``featkit extract`` with one intra-op thread (what
torchrun gives each worker), so the comparison is bit-for-bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from featkit.cli import app
from featkit.data.digits import write_digits
from featkit.errors import FeatkitError
from featkit.extraction.distributed import (
    LOCAL,
    DistributedContext,
    choose_backend,
    context_from_env,
    process_group,
    rank_device,
)
from featkit.extraction.run import partial_dir

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
# A full-width ViT-tiny at 32 px (4 patches): cheap, and --random-init seeds it the same
# way on every rank. Shards of 4 rows give 10 shards for 40 images, 5 per rank.
EXTRACT_ARGS = [
    "--model",
    "timm:vit_tiny_patch16_224",
    "--image-size",
    "32",
    "--random-init",
    "--precision",
    "fp32",
    "--batch-size",
    "4",
    "--shard-size",
    "4",
    "--workers",
    "0",
]
SHARDS = 10


# -- the context, pure -------------------------------------------------------------------
def test_context_from_torchrun_variables() -> None:
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29600",
    }
    ctx = context_from_env(env)
    assert (ctx.rank, ctx.world, ctx.local_rank) == (3, 4, 1)
    assert (ctx.master_addr, ctx.master_port) == ("node7", 29600)
    assert ctx.is_distributed and not ctx.is_main
    single = context_from_env({})
    assert single == DistributedContext() and single.is_main and not single.is_distributed


@pytest.mark.parametrize(
    "env, word",
    [
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "rank"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "local rank"),
    ],
)
def test_bad_variables_are_one_line_errors(env: dict[str, str], word: str) -> None:
    with pytest.raises(FeatkitError, match=word):
        context_from_env(env)


@pytest.mark.parametrize("n, world", [(0, 3), (7, 1), (10, 3), (40, 2), (5, 8)])
def test_split_has_no_padding_and_no_duplicates(n: int, world: int) -> None:
    items = list(range(n))
    shares = [DistributedContext(rank=r, world=world).split(items) for r in range(world)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == items  # every item once: covering, disjoint, not padded
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_devices_and_backends() -> None:
    job = DistributedContext(rank=1, world=2, local_rank=1)
    assert rank_device(job, "auto", cuda_available=True) == "cuda:1"
    assert rank_device(job, "auto", cuda_available=False) == "cpu"
    assert rank_device(job, "cuda", cuda_available=True) == "cuda:1"
    assert rank_device(job, "cpu", cuda_available=True) == "cpu"
    assert rank_device(DistributedContext(), "auto", cuda_available=True) == "auto"
    assert choose_backend("cuda:1") == "nccl" and choose_backend("cpu") == "gloo"
    with pytest.raises(FeatkitError, match="backend"):
        DistributedContext(backend="mpi")


def test_a_single_process_needs_no_process_group() -> None:
    with process_group(DistributedContext()) as group:
        assert group is LOCAL and (group.rank, group.world) == (0, 1)
        group.barrier()
    assert not torch.distributed.is_initialized()


# -- torchrun end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(
        tmp_path_factory.mktemp("dist") / "digits", imbalance=1.0, size=32, max_per_class=4
    )


@pytest.fixture(scope="module")
def reference(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process store, one intra-op thread like each torchrun worker."""
    out = tmp_path_factory.mktemp("single") / "single.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, ["extract", str(digits), *EXTRACT_ARGS, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def _torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --standalone picks a free rendezvous port: parallel test runs do not collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.run(
        [*command, "--nproc-per-node", "2", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _contents(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file."""
    found: dict[str, object] = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda name, obj: (
                found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
        # The pass's seconds and memory (the "cost" attribute) differ from run to run.
        found.update({f"@{k}": v for k, v in h5.attrs.items() if k != "cost"})
    return found


def assert_identical(a: Path, b: Path) -> None:
    left, right = _contents(a), _contents(b)
    assert sorted(left) == sorted(right)
    assert {"features/cls", "features/patch_mean", "images/path"} <= left.keys()
    for key, value in left.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.array_equal(value, right[key], equal_nan=True), key  # bit for bit
        else:
            assert np.array_equal(value, right[key]), key  # type: ignore[arg-type]


def _shards_by_rank(log: Path) -> dict[int, list[str]]:
    """The shard files each rank moved into place, checking rank r only wrote shards r::2."""
    lines = log.read_text().splitlines() if log.exists() else []
    found: dict[int, list[str]] = {0: [], 1: []}
    for line in lines:
        rank, name = line.split()
        found[int(rank)].append(name)
        assert int(name.removeprefix("shard-").removesuffix(".h5")) % 2 == int(rank), line
    return found


def test_two_gloo_processes_give_the_single_process_store(
    digits: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two.h5"
    run = _torchrun("-m", "featkit", "extract", str(digits), *EXTRACT_ARGS, "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    said = " ".join((run.stdout + run.stderr).split())  # rich wraps long lines
    assert "(2 processes)" in said and "done: 40 rows" in said
    assert said.count("done:") == 1  # rank 0 reports for the job
    assert_identical(out, reference)
    assert not partial_dir(out).exists()
    # What a user does next: the joined store is an ordinary store.
    workspace = tmp_path / "ws"
    probe = ["probe", str(out), "--protocols", "knn", "--shots", "1", "--episodes", "1"]
    result = CliRunner().invoke(app, [*probe, "-w", str(workspace)])
    assert result.exit_code == 0, result.output
    assert (workspace / "results" / "results.csv").is_file()


def test_a_killed_rank_resumes_per_shard_to_the_same_store(
    digits: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed.h5"
    args = ["extract", str(digits), *EXTRACT_ARGS, "--out", str(out)]
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    # Rank 1 dies right before its second shard lands; torchrun then stops rank 0.
    crashed = _torchrun(str(WORKER), str(first), "1", "2", *args)
    assert crashed.returncode != 0
    assert not out.exists()
    work = partial_dir(out)
    assert (work / "manifest.json").is_file()
    assert list(work.glob("*.tmp")), "the killed rank should leave its half-written shard"
    before = _shards_by_rank(first)
    assert "shard-000001.h5" in before[1] and "shard-000003.h5" not in before[1]

    resumed = _torchrun(str(WORKER), str(second), "-1", "0", *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _shards_by_rank(second)
    done_before = before[0] + before[1]
    assert not set(done_before) & set(after[0] + after[1])  # kept, not recomputed
    assert sorted(done_before + after[0] + after[1]) == [
        f"shard-{k:06d}.h5" for k in range(SHARDS)
    ]  # every shard exactly once over both runs
    assert_identical(out, reference)
    assert not work.exists()
