"""Decoding and the forward pass: images -> batches -> (cls, patch mean, grid, layers).

Decode threads run ahead of the forward pass by a bounded number of images
(:func:`decoded`); :class:`Runner` stacks a batch, moves it to the device as the thread
plan says (pinned memory and asynchronous copies on CUDA only) and runs the backbone
under ``torch.inference_mode`` and the chosen autocast.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featkit.errors import ImageDecodeError
from featkit.extraction.plan import ThreadPlan

if TYPE_CHECKING:
    import torch

    from featkit.backbones import Backbone

Forwarded = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]


def decode_one(
    root: Path, transform: Callable[[Any], torch.Tensor], rel: str
) -> tuple[torch.Tensor | None, str]:
    from featkit.data.images import load_image

    try:
        return transform(load_image(root / rel)), ""
    except ImageDecodeError as err:
        return None, str(err) or "cannot decode"
    except (OSError, ValueError) as err:
        # A file that vanished or a transform that refuses the image: record, go on.
        return None, f"{type(err).__name__}: {err}"


def _yield_cpu() -> None:
    """Lower the calling decode thread's scheduling priority (Linux threads have their own).

    The forward pass is the work that bounds the rate; at a lower priority a decode
    thread runs in the forward's gaps instead of taking cores from it, and when the
    forward waits for images there is nothing else to run, so decoding still keeps up.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def decoded(
    items: Sequence[str],
    decode: Callable[[str], Any],
    workers: int,
    lookahead: int,
    *,
    background: bool = False,
) -> Generator[Any, None, None]:
    """``map(decode, items)`` in order, with up to ``lookahead`` decodes in flight.

    ``background``: decode threads run at a lower priority than the forward pass
    (:func:`_yield_cpu`), for a CPU whose cores the forward pass uses too.
    """
    if workers == 0:
        yield from map(decode, items)
        return
    with ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="featkit-decode",
        initializer=_yield_cpu if background else None,
    ) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(decode, item))
            if len(pending) >= lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def torch_threads(limit: int) -> Iterator[None]:
    """At most ``limit`` torch intra-op threads inside the block (never more than were set:
    a caller that chose fewer keeps them); the previous setting is restored after."""
    import torch

    before = torch.get_num_threads()
    wanted = max(1, min(before, limit))
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)


class Runner:
    """Runs batches through the backbone and lays results out as shard arrays."""

    def __init__(
        self,
        backbone: Backbone,
        device: str,
        precision: str,
        patches: str,
        layers: int = 1,
        threads: ThreadPlan | None = None,
        mean_is_cls: bool = False,
    ) -> None:
        self.backbone = backbone
        self.device = device
        self.precision = precision
        self.patches = patches
        self.layers = layers  # CLS tokens of the last `layers` blocks; 1: the CLS alone
        self.threads = threads or ThreadPlan(0, 1, pin_memory=False, non_blocking=False)
        # The backbone's CLS is its patch mean (pixels): the store links one to the other.
        self.mean_is_cls = mean_is_cls

    def to_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        """One batch on the device: through pinned memory with an asynchronous copy on
        CUDA, where the copy then overlaps the host's work; a plain stack on a CPU."""
        import torch

        batch = torch.stack(images)
        if self.threads.pin_memory:
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=self.threads.non_blocking)

    def forward(self, images: list[torch.Tensor]) -> Forwarded:
        """(cls, patch mean, grid, CLS of the last blocks ``[B, layers, D]``) of a batch.

        The patch mean is None with ``patches="none"`` and when it is the CLS.
        """
        import torch

        from featkit.precision import autocast

        batch = self.to_device(images)
        stack = None
        with torch.inference_mode(), autocast(self.precision, self.device):
            if self.layers > 1:
                out, per_block = self.backbone.forward_layers(batch, self.layers)
                stack = per_block.float().cpu().numpy()
            else:
                out = self.backbone(batch)
        cls = out.cls.float().cpu().numpy()
        if self.patches == "none":
            return cls, None, None, stack
        grid = out.patches.float()
        mean = None if self.mean_is_cls else grid.mean(dim=(1, 2)).cpu().numpy()
        full = grid.half().cpu().numpy() if self.patches == "full" else None
        return cls, mean, full, stack
