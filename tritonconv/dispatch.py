"""The dispatch seam: every kernel launch asks this module for its tile configuration.

A launcher describes its call as a `Problem` (which kernel, the GEMM-shaped sizes of the work, dtype and
layout) and gets back a `Config` (block sizes and other constexprs, `num_warps`, `num_stages`). Today the
answer comes from heuristics; autotuning and a persistent cache sit behind the same `config_for`.

Triton's interpreter always gets exactly one configuration, sized so that tiny test shapes run in few
programs (the interpreter costs ~150 us per program, whatever its size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    return HEURISTICS[problem.kernel](problem, interpreting())


# ---------------------------------------------------------------------------------------------------------
# Heuristics: one function per kernel family, taking (problem, interpreter) and returning a Config.
# ---------------------------------------------------------------------------------------------------------

# Streaming multiprocessors to fill with programs when splitting a reduction (H100/H200 have 132).
_TARGET_PROGRAMS = 2 * 132


def _pow2_clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(value, 1))))


def _gemm_blocks(problem: Problem, interpreter: bool) -> dict[str, int]:
    """Block sizes for an implicit GEMM. tl.dot needs every block >= 16."""
    if interpreter:
        return {"BLOCK_M": _pow2_clamp(problem.m, 16, 128), "BLOCK_N": _pow2_clamp(problem.n, 16, 64),
                "BLOCK_K": _pow2_clamp(problem.k, 16, 32)}
    wide = problem.dtype != torch.float32  # 16-bit operands: twice the K per byte of shared memory
    # 128x64 tiles keep 4 warps' accumulators in registers without spilling; small problems get 64-row
    # tiles so that more programs run.
    block_m = 128 if problem.m * problem.batch >= 128 * 132 else 64
    return {"BLOCK_M": block_m, "BLOCK_N": _pow2_clamp(problem.n, 16, 64 if wide else 64),
            "BLOCK_K": _pow2_clamp(problem.k, 16, 64 if wide else 32)}


def _conv_gemm(problem: Problem, interpreter: bool) -> Config:
    """Forward and input-gradient implicit GEMM: output tiles, reduction over channels per tap."""
    if interpreter:
        return Config.of(num_warps=4, num_stages=1, GROUP_M=8, **_gemm_blocks(problem, True))
    return Config.of(num_warps=4, num_stages=3, GROUP_M=8, **_gemm_blocks(problem, False))


def _conv_weight_grad(problem: Problem, interpreter: bool) -> Config:
    """Weight gradient: small [F_g, C_g] tiles per tap with a long reduction over N*OH*OW, split across
    programs until the GPU is full (or, in the interpreter, in two whenever there are two steps, so the
    tests exercise the atomic path)."""
    blocks = _gemm_blocks(Problem(problem.kernel, problem.m, problem.n, problem.k, problem.batch,
                                  problem.dtype), interpreter)
    if interpreter:
        blocks["BLOCK_K"] = 32
        split = 2 if problem.k > 32 else 1
        return Config.of(num_warps=4, num_stages=1, SPLIT_K=split, **blocks)
    blocks["BLOCK_K"] = 64 if problem.dtype != torch.float32 else 32
    tiles = triton.cdiv(problem.m, blocks["BLOCK_M"]) * triton.cdiv(problem.n, blocks["BLOCK_N"]) * problem.batch
    steps = triton.cdiv(problem.k, blocks["BLOCK_K"])
    # Keep at least 8 reduction steps per split so the atomics stay a small share of the traffic.
    split = max(1, min(_TARGET_PROGRAMS // max(tiles, 1), steps // 8, 64))
    return Config.of(num_warps=4, num_stages=3, SPLIT_K=split, **blocks)


HEURISTICS = {
    "conv2d_forward": _conv_gemm,
    "conv2d_input_grad": _conv_gemm,
    "conv2d_weight_grad": _conv_weight_grad,
}
