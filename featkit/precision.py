"""Which number format the forward pass runs in.

bf16 autocast roughly halves CPU inference time where the CPU has AMX or AVX-512-BF16
(about 2.7x for a ViT-S/14 on the development machine) and on CUDA; on CPUs without it,
bf16 is emulated and slower than fp32. So ``auto`` detects instead of assuming. The
detection reads the hardware once (:func:`detect_hardware`); the decision is a pure
function of that data (:func:`resolve_precision`) so it can be tested on any machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from featkit.errors import FeatkitError

logger = logging.getLogger("featkit")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# /proc/cpuinfo flags that give native bf16 matrix maths.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class Hardware:
    """What the precision decision depends on."""

    device: str  # "cpu" | "cuda"
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() on the chosen GPU
    cpu_flags: frozenset[str] = field(default_factory=frozenset)  # lower-case CPU flags

    @property
    def fast_bf16(self) -> bool:
        if self.device == "cuda":
            return self.cuda_bf16
        return bool(self.cpu_flags & BF16_CPU_FLAGS)


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The CPU flags of a /proc/cpuinfo text (first ``flags`` line)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.lower().split())
    return frozenset()


def _cpu_flags() -> frozenset[str]:
    try:
        flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = frozenset()
    if flags:
        return flags
    # No /proc (macOS, Windows): ask torch's own CPU feature probes where it has them.
    import torch

    probes = {
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
    }
    found = set()
    for flag, probe in probes.items():
        with contextlib.suppress(Exception):
            if probe is not None and probe():
                found.add(flag)
    return frozenset(found)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FeatkitError(f"device: expected auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatkitError(f"device: expected a visible CUDA GPU for {device!r}, found none")
    return device


def detect_hardware(device: str) -> Hardware:
    """Probe the machine for ``device`` (already resolved: "cpu" or "cuda[:N]")."""
    import torch

    if device.startswith("cuda"):
        return Hardware(device="cuda", cuda_bf16=bool(torch.cuda.is_bf16_supported()))
    return Hardware(device="cpu", cpu_flags=_cpu_flags())


def resolve_precision(requested: str, hardware: Hardware) -> str:
    """``auto|fp32|bf16|fp16`` -> the precision actually used (never ``auto``)."""
    if requested not in PRECISIONS:
        raise FeatkitError(f"precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return "bf16" if hardware.fast_bf16 else "fp32"
    if requested == "fp16" and hardware.device != "cuda":
        raise FeatkitError(
            "precision: expected fp16 only on a CUDA GPU (CPU fp16 is slow and inexact), "
            "got fp16 on cpu; use --precision bf16 or fp32"
        )
    if requested == "bf16" and not hardware.fast_bf16:
        logger.warning(
            "bf16 requested but this %s has no native bf16 support: it will be slower than fp32",
            hardware.device,
        )
    return requested


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """Run the enclosed forward in ``precision`` (fp32 = no autocast)."""
    import torch

    if precision == "fp32":
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
