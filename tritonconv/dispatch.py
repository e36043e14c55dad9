"""The dispatch seam: every kernel launch asks this module for its tile configuration.

A launcher describes its call as a `Problem` (which kernel, the GEMM-shaped sizes of the work, dtype and
layout) and gets back a `Config` (block sizes and other constexprs, `num_warps`, `num_stages`). Today the
answer comes from heuristics; autotuning and a persistent cache sit behind the same `config_for`.

Triton's interpreter always gets exactly one configuration, sized so that tiny test shapes run in few
programs (the interpreter costs ~150 us per program, whatever its size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import itertools
from typing import Callable, Sequence

import torch
import triton

from tritonconv._checks import interpreting


@dataclass(frozen=True)
class Config:
    """One launch configuration: constexpr meta-parameters plus `num_warps` and `num_stages`."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3

    @staticmethod
    def of(num_warps: int = 4, num_stages: int = 3, **meta: int) -> "Config":
        return Config(tuple(sorted(meta.items())), num_warps, num_stages)

    def __getitem__(self, name: str) -> int:
        return dict(self.meta)[name]

    def launch_kwargs(self) -> dict[str, int]:
        """Keyword arguments for `kernel[grid](..., **config.launch_kwargs())`."""
        return {**dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}


@dataclass(frozen=True)
class Problem:
    """What a launch computes, in GEMM terms: `batch` independent [m, k] x [k, n] products.

    For the implicit-GEMM conv kernels m, n and k are the GEMM sizes of one group (or one tap, for the
    weight gradient) and `batch` counts groups (times taps). Elementwise kernels use m alone.
    """

    kernel: str
    m: int
    n: int = 1
    k: int = 1
    batch: int = 1
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    extra: tuple[tuple[str, object], ...] = field(default=())


def config_for(problem: Problem) -> Config:
    """The configuration to launch `problem.kernel` with."""
    return spec(problem.kernel).heuristic(problem, interpreting())


# ---------------------------------------------------------------------------------------------------------
# The kernel registry. Each op module registers its kernels next to their launchers, with a heuristic
# (problem, interpreter) -> Config that needs no timing. `config_for` is the one place a launch asks.
# ---------------------------------------------------------------------------------------------------------

Heuristic = Callable[[Problem, bool], Config]
Space = Callable[[Problem], list[Config]]


@dataclass(frozen=True)
class KernelSpec:
    """How to configure one kernel: a timing-free heuristic and the space autotuning searches."""

    name: str
    heuristic: Heuristic
    space: Space


_KERNELS: dict[str, KernelSpec] = {}


def register(kernel: str, heuristic: Heuristic, space: Space) -> None:
    """Declare how to configure `kernel` (the name used in Problem.kernel).

    `heuristic(problem, interpreter)` picks one Config without timing (the interpreter's is the only
    config it ever runs); `space(problem)` lists every Config worth timing on a GPU for that problem.
    """
    if kernel in _KERNELS:
        raise ValueError(f"kernel {kernel!r} is registered twice")
    _KERNELS[kernel] = KernelSpec(kernel, heuristic, space)


def spec(kernel: str) -> KernelSpec:
    """The registered KernelSpec of `kernel`."""
    try:
        return _KERNELS[kernel]
    except KeyError:
        raise KeyError(f"no kernel {kernel!r} is registered; known: {kernels()}") from None


def kernels() -> list[str]:
    """Names of every registered kernel."""
    return sorted(_KERNELS)


def product_space(num_warps: Sequence[int], num_stages: Sequence[int], **meta: Sequence[int]) -> list[Config]:
    """Every combination of the given meta-parameter values, warps and stages: a config-space factory."""
    names = sorted(meta)
    return [Config(tuple(zip(names, values)), w, s)
            for values in itertools.product(*(meta[n] for n in names)) for w in num_warps for s in num_stages]


# Programs to launch when splitting a reduction so an H100/H200 (132 SMs) is full twice over.
TARGET_PROGRAMS = 2 * 132


def pow2_clamp(value: int, low: int, high: int) -> int:
    """The next power of two >= value, clamped to [low, high]."""
    return max(low, min(high, triton.next_power_of_2(max(value, 1))))


def gemm_blocks(problem: Problem, interpreter: bool) -> dict[str, int]:
    """BLOCK_M/N/K for a GEMM-shaped kernel (tl.dot needs every block >= 16).

    On a GPU: 64 columns and 64 (16-bit) or 32 (float32) reduction elements per step, so two operand
    tiles of a 3-stage pipeline fit shared memory comfortably; 128-row tiles when there is enough work
    to fill 132 SMs, else 64 so that more programs run. In the interpreter: one tile as large as the
    tiny test problem, since the interpreter pays per program.
    """
    if interpreter:
        return {"BLOCK_M": pow2_clamp(problem.m, 16, 128), "BLOCK_N": pow2_clamp(problem.n, 16, 64),
                "BLOCK_K": pow2_clamp(problem.k, 16, 32)}
    block_m = 128 if problem.m * problem.batch >= 128 * 132 else 64
    block_k = 64 if problem.dtype != torch.float32 else 32
    return {"BLOCK_M": block_m, "BLOCK_N": pow2_clamp(problem.n, 16, 64), "BLOCK_K": pow2_clamp(problem.k, 16, block_k)}
