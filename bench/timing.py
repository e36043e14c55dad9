"""Timing on a GPU: CUDA-event times of a call with `triton.testing.do_bench` over rotating input sets, and
the roofline's ceilings (HBM bandwidth, matmul rates), measured on the spot at the start of a run or, with
no GPU, taken from the H200's datasheet."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import triton.testing


@dataclass(frozen=True)
class Ceilings:
    """What the GPU can do at best: bytes/s of HBM, FLOP/s of a large dense matmul by operand type."""

    bandwidth: float
    matmul: dict[str, float]   # "float16", "bfloat16", "tf32" (tensor cores), "float32" (no tensor cores)
    source: str

    def peak(self, unit: str, dtype: torch.dtype) -> float:
        """FLOP/s of `unit` on `dtype` operands. "tensor": a tensor-core GEMM at the dtype's matmul rate,
        float32 at TF32's only when cuDNN may use TF32 (as our kernels then do). "simt": float32 FMAs
        without tensor cores (depthwise convolution computes so, whatever the dtype)."""
        if unit == "simt":
            return self.matmul["float32"]
        if dtype == torch.float32:
            return self.matmul["tf32" if torch.backends.cudnn.allow_tf32 else "float32"]
        return self.matmul[str(dtype).removeprefix("torch.")]

    def describe(self) -> str:
        """The ceilings in one line, with where they come from."""
        rates = ", ".join(f"{name} {rate / 1e12:.0f}" for name, rate in self.matmul.items())
        return (f"{self.source}: HBM {self.bandwidth / 1e12:.2f} TB/s; dense matmul {rates} TFLOP/s "
                "(float32: without tensor cores)")


# The H200 SXM datasheet: 4.8 TB/s HBM3e; dense 989 TFLOP/s fp16/bf16, 494 TF32, 67 float32.
H200 = Ceilings(4.8e12, {"float16": 989e12, "bfloat16": 989e12, "tf32": 494e12, "float32": 67e12}, "H200 datasheet")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 20th and 80th percentiles over `reps` timed calls."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def time_call(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None,
              warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Time `fn` with CUDA events through triton.testing.do_bench: one untimed call, then `warmup_ms` of
    untimed calls, then as many calls as fit `rep_ms`, each after an L2 flush (do_bench's) and with the
    gradients of `grad_to_none` reset so backward never accumulates."""
    times = np.asarray(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                               return_mode="all"), dtype=np.float64)
    median, p20, p80 = np.quantile(times, [0.5, 0.2, 0.8])
    return Timing(float(median), float(p20), float(p80), len(times))


def rotation_sets(set_bytes: int, l2_bytes: int, free_bytes: int) -> int:
    """How many independent input sets to cycle through: enough that together they are 4x the L2, so a
    call never finds its inputs left in L2 by the calls before it; at most 64, and all of them within a
    quarter of the free GPU memory."""
    size = max(set_bytes, 1)
    return max(1, min(math.ceil(4 * l2_bytes / size), 64, free_bytes // 4 // size))


def cycle(items: Sequence) -> Callable[[], object]:
    """A function returning items[0], items[1], ... round and round."""
    iterator = itertools.cycle(items)
    return lambda: next(iterator)


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 size (50 MB on an H100/H200 when torch does not say)."""
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))


def measure_ceilings(device: torch.device) -> Ceilings:
    """Measure HBM bandwidth (a 1 GiB device-to-device copy: bytes read plus written over the median time)
    and the matmul rate of 8192^3 products on random data in fp16, bf16, TF32 and float32 without tensor
    cores, as the run's roofline ceilings."""
    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    copy = time_call(lambda: dst.copy_(src), rep_ms=200)
    bandwidth = 2 * src.numel() * src.element_size() / (copy.median_ms * 1e-3)
    rates = {}
    size = 8192
    saved = torch.backends.cuda.matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers fp32_precision to allow_tf32, and says so
        try:
            for name, dtype, tf32 in (("float16", torch.float16, False), ("bfloat16", torch.bfloat16, False),
                                      ("tf32", torch.float32, True), ("float32", torch.float32, False)):
                a = torch.randn(size, size, device=device).to(dtype)
                b = torch.randn(size, size, device=device).to(dtype)
                torch.backends.cuda.matmul.allow_tf32 = tf32
                t = time_call(lambda a=a, b=b: a @ b, rep_ms=200)
                rates[name] = 2 * size ** 3 / (t.median_ms * 1e-3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    torch.cuda.empty_cache()
    return Ceilings(bandwidth, rates, f"measured on {torch.cuda.get_device_name(device)}")
