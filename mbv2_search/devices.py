"""Device helpers: which device and precision, the hardware's name, CPU threads, the memory format.

Torch only; no Lightning (a worker sets its threads and a study names its hardware without it).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch

from mbv2_search.arch import ArchSpec
from mbv2_search.errors import TrainingError
from mbv2_search.model import build_model


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is the first GPU where there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device: got {device!r} but no CUDA GPU is available here; use 'cpu' or 'auto'")
    return resolved


def hardware_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"


def configure_cpu(threads: int | None = None) -> None:
    """Flush subnormals to zero (10x faster small-model training here) and set the thread count."""
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 mixed precision on GPUs that support it, fp16 mixed on older ones, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


_FORMAT_CACHE: dict[tuple, bool] = {}


def prefers_channels_last(spec: ArchSpec, device: torch.device, *, batch_size: int) -> bool:
    """channels_last on GPUs; on the CPU, whichever format is faster for this model, measured.

    The probe times forward + backward at up to 16 images in both formats (cached per shape), since
    on CPUs either format can be 2x faster depending on the model; it costs about 0.1 s.
    """
    if device.type == "cuda":
        return True
    key = (
        spec.blocks,
        spec.stem_channels,
        spec.head_channels,
        spec.resolution,
        min(batch_size, 16),
        torch.get_num_threads(),
    )
    if key not in _FORMAT_CACHE:
        # on its own random stream: a probe that ran or was cached must not change the seeded run
        with torch.random.fork_rng(devices=[]):
            _FORMAT_CACHE[key] = _probe_channels_last(spec, min(batch_size, 16))
    return _FORMAT_CACHE[key]


def _probe_channels_last(spec: ArchSpec, batch_size: int) -> bool:
    model = build_model(spec)
    images = torch.randn(batch_size, 3, spec.resolution, spec.resolution)
    timings = {}
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            model(x).sum().backward()
            seconds.append(time.perf_counter() - start)
        timings[channels_last] = min(seconds[1:])  # the first run is warm-up
    return timings[True] < timings[False]


def rank_devices(device: str, count: int = 1) -> list[torch.device]:
    """The devices of one training run: 'cpu' count times (processes), 'cuda' the first count GPUs, or the
    GPUs named ('cuda:2,3'); count 1 is one device, as resolve_device says."""
    if count < 1:
        raise TrainingError(f"devices: got {count}; allowed: 1 or more")
    if "," in device:
        names = [f"cuda:{index.strip().removeprefix('cuda:')}" for index in device.split(",")]
        if count not in (1, len(names)) or len(set(names)) != len(names):
            raise TrainingError(f"devices: got {count} with device {device!r}; name each GPU once, as many as devices")
        return [resolve_device(name) for name in names]
    resolved = resolve_device(device)
    if count == 1 or resolved.type == "cpu":
        return [resolved] * count
    if resolved.index is not None:
        raise TrainingError(f"devices: got {count} with device {device!r}; name the GPUs ('cuda:0,1') or use 'cuda'")
    if count > torch.cuda.device_count():
        raise TrainingError(f"devices: got {count} but this machine has {torch.cuda.device_count()} GPUs")
    return [torch.device(f"cuda:{index}") for index in range(count)]
