"""torch.distributed plumbing: one extraction pass split over processes, GPUs and nodes.

featkit runs on the launcher its ecosystem already uses: ``torchrun`` starts N copies
of ``featkit extract``, each learns its place from torchrun's environment variables,
and the copies meet only at barriers. The library never reads the environment: the
CLI builds a :class:`DistributedContext` with :func:`context_from_env` and passes a
:class:`Coordinator` down. A single process uses :data:`LOCAL`, whose barrier does
nothing, so library code has one path for both cases.

How the extraction pass uses it (``featkit.extraction.run``)::

    rank 0: lock the store, plan, write the manifest  others wait    barrier
    every rank: read the plan, extract its shards        rank r takes shards r::world
                                                                     barrier
    rank 0: merge the shards into the store, in work-list order     barrier
    every rank: read the finished store for its report

Work is split by shard (a fixed run of work-list rows) rather than by single image so
that every image is batched exactly as in a single-process run: the joined store is
then bit-identical to it, whatever the number of processes (given the same number of
intra-op threads per process on CPUs). ``split`` takes
``items[rank::world]``: no padding, no duplicates (unlike ``DistributedSampler``, which
pads by repeating samples).

Backends: NCCL when the ranks run on CUDA devices, gloo on CPUs. Every collective
waits at most ``timeout_s`` (default 6 h): a barrier after the extraction waits for
the slowest rank, so it must outlast the longest share of the pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from featkit.errors import FeatkitError

T = TypeVar("T")

BACKENDS = ("gloo", "nccl")
#: Long enough for the slowest rank to finish its share of a large extraction.
DEFAULT_TIMEOUT_S = 6 * 3600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a job (what torchrun's RANK, WORLD_SIZE, … say)."""

    rank: int = 0  # global rank, 0 .. world-1; rank 0 prepares and merges
    world: int = 1  # number of processes in the job (all nodes)
    local_rank: int = 0  # rank on this node: the CUDA device index this process uses
    backend: str | None = None  # "gloo" | "nccl"; None picks from the device (choose_backend)
    master_addr: str = "127.0.0.1"  # host of rank 0's rendezvous store
    master_port: int = 29500  # its port
    timeout_s: float = DEFAULT_TIMEOUT_S  # longest wait of any barrier

    def __post_init__(self) -> None:
        if self.world < 1:
            raise FeatkitError(f"world size: expected an integer ≥ 1, got {self.world}")
        if not 0 <= self.rank < self.world:
            raise FeatkitError(
                f"rank: expected an integer in [0, {self.world - 1}], got {self.rank}"
            )
        if self.local_rank < 0:
            raise FeatkitError(f"local rank: expected an integer ≥ 0, got {self.local_rank}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise FeatkitError(
                f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.timeout_s <= 0:
            raise FeatkitError(f"timeout: expected seconds > 0, got {self.timeout_s}")

    @property
    def is_distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def split(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's share, ``items[rank::world]``: disjoint, covering, never padded."""
        return items[self.rank :: self.world]


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FeatkitError(f"{name}: expected an integer, got {raw!r}") from None


def context_from_env(
    env: Mapping[str, str], *, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistributedContext:
    """The context torchrun (or a SLURM script exporting the same names) describes.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    from ``env`` (the CLI passes ``os.environ``); without ``WORLD_SIZE`` it is a
    single process.
    """
    world = _int_var(env, "WORLD_SIZE", 1)
    if world <= 1:
        return DistributedContext(backend=backend, timeout_s=timeout_s)
    if "RANK" not in env:
        raise FeatkitError(f"RANK: expected it beside WORLD_SIZE={world}, got none")
    return DistributedContext(
        rank=_int_var(env, "RANK", 0),
        world=world,
        local_rank=_int_var(env, "LOCAL_RANK", 0),
        backend=backend,
        master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int_var(env, "MASTER_PORT", 29500),
        timeout_s=timeout_s,
    )


def rank_device(ctx: DistributedContext, requested: str, cuda_available: bool) -> str:
    """The device of this rank: ``auto``/``cuda`` become ``cuda:<local_rank>`` in a job.

    A single process keeps ``requested`` as it is; an explicit ``cuda:N`` or ``cpu`` is
    respected.
    """
    if not ctx.is_distributed:
        return requested
    if requested == "auto":
        return f"cuda:{ctx.local_rank}" if cuda_available else "cpu"
    if requested == "cuda":
        return f"cuda:{ctx.local_rank}"
    return requested


def choose_backend(device: str) -> str:
    """NCCL for CUDA devices, gloo for CPUs."""
    return "nccl" if device.startswith("cuda") else "gloo"


class Coordinator(Protocol):
    """What a library function needs to cooperate with the other ranks."""

    @property
    def rank(self) -> int: ...

    @property
    def world(self) -> int: ...

    def barrier(self) -> None:
        """Return once every rank has called it."""


class LocalCoordinator:
    """A job of one process: rank 0 of 1; barriers return at once."""

    rank = 0
    world = 1

    def barrier(self) -> None:
        pass


LOCAL = LocalCoordinator()


class ProcessGroupCoordinator:
    """A :class:`Coordinator` over the default torch.distributed process group."""

    def __init__(self, ctx: DistributedContext, device: str) -> None:
        self.ctx = ctx
        self.device = device

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world(self) -> int:
        return self.ctx.world

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            # NCCL barriers run on a device; name ours instead of letting it guess GPU 0.
            dist.barrier(device_ids=[_device_index(self.device)])
        else:
            dist.barrier()


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


@contextmanager
def process_group(
    ctx: DistributedContext, device: str = "cpu"
) -> Iterator[LocalCoordinator | ProcessGroupCoordinator]:
    """Join the job's process group for the ``with`` block, then leave it.

    A single process gets :data:`LOCAL` and touches nothing in torch.distributed.
    """
    if not ctx.is_distributed:
        yield LOCAL
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = ctx.backend or choose_backend(device)
    if backend == "nccl" and not device.startswith("cuda"):
        raise FeatkitError(f"backend nccl: expected a CUDA device, got {device!r}")
    if backend == "nccl":
        torch.cuda.set_device(_device_index(device))
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised")
    dist.init_process_group(
        backend=backend,
        # tcp:// with torchrun's own address: under torchrun this joins the agent's store.
        init_method=f"tcp://{ctx.master_addr}:{ctx.master_port}",
        rank=ctx.rank,
        world_size=ctx.world,
        timeout=timedelta(seconds=ctx.timeout_s),
    )
    try:
        yield ProcessGroupCoordinator(ctx, device)
    finally:
        dist.destroy_process_group()
