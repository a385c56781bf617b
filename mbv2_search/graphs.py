"""CUDA graphs for the training step: small candidates at 32 px are launch-bound on a GPU (hundreds of
kernels of a few microseconds each), and replaying a captured graph launches them all at once.

The model's training-mode forward and backward are captured for the one batch shape training uses
(the last partial batch is dropped); any other shape, evaluation and the CPU run eagerly on the same
weights. Capturing changes no result: its warm-up steps run on a copy of the BatchNorm statistics and
the random state, and the replayed kernels are the eager ones. Whether graphs are faster is measured
once per hardware and architecture shape (`prefers_cuda_graphs`), as the memory format is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from mbv2_search.arch import ArchSpec
from mbv2_search.model import build_model


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision ('bf16-mixed' -> bfloat16), None without autocast."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


@contextlib.contextmanager
def _untouched(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Restore the model's buffers (BatchNorm statistics) and the random streams after warm-up steps."""
    saved = [b.detach().clone() for b in model.buffers()]
    with torch.random.fork_rng(devices=[device]):
        yield
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


def capture(model: torch.nn.Module, sample: torch.Tensor, *, precision: str) -> torch.nn.Module:
    """Replay the model's training forward and backward from CUDA graphs for batches shaped like `sample`.

    The model stays the same object with the same state_dict (checkpoints and the EMA are unchanged);
    its forward runs the graphs in training mode at the sample's shape and the eager code otherwise.
    """
    dtype = autocast_dtype(precision)
    # autocast's weight cache must be off while capturing (torch.cuda.make_graphed_callables' rule)
    autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
    training = model.training
    with _untouched(model, sample.device), autocast:
        torch.cuda.make_graphed_callables(model.train(), (sample,))  # graphs the training-mode forward
    model.train(training)
    graphed, eager = model.forward, type(model).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if model.training and x.shape == sample.shape and x.dtype == sample.dtype:
            return graphed(x)
        return eager(model, x)

    model.forward = forward
    return model


def batch_sample(spec: ArchSpec, batch_size: int, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """A zero batch with the shape, dtype and memory format of the training batches."""
    sample = torch.zeros(batch_size, 3, spec.resolution, spec.resolution, device=device)
    return sample.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


_CHOICES: dict[tuple, bool] = {}


def prefers_cuda_graphs(spec: ArchSpec, device: torch.device, *, batch_size: int, precision: str) -> bool:
    """Whether replaying graphs trains this model faster than eager on this GPU: measured, cached per shape.

    Times 20 forward+backward steps each way after warm-up (about a second); never on the CPU.
    """
    if device.type != "cuda":
        return False
    key = (spec.blocks, spec.stem_channels, spec.head_channels, spec.resolution, batch_size, precision, str(device))
    if key not in _CHOICES:
        with torch.random.fork_rng(devices=[device]):
            _CHOICES[key] = _probe(spec, device, batch_size=batch_size, precision=precision)
    return _CHOICES[key]


def _probe(spec: ArchSpec, device: torch.device, *, batch_size: int, precision: str) -> bool:
    sample = batch_sample(spec, batch_size, device, channels_last=True)
    dtype = autocast_dtype(precision)
    seconds = {}
    for graphs in (False, True):
        model = build_model(spec).to(device, memory_format=torch.channels_last).train()
        if graphs:
            capture(model, sample, precision=precision)
        seconds[graphs] = _time_steps(model, sample, dtype=dtype)
    return seconds[True] < seconds[False]


def _time_steps(model: torch.nn.Module, sample: torch.Tensor, *, dtype: torch.dtype | None, steps: int = 20) -> float:
    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(sample).float().sum()
        loss.backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize(sample.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(sample.device)
    return time.perf_counter() - start
