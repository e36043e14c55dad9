"""What the heuristics assume about the GPU, and the GEMM tile sizes several op files share.

The numbers describe an H100/H200 (sm_90); `tritonconv.dispatch` prunes tuning spaces with them and each
op's heuristic sizes its tiles from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from tritonconv.dispatch import Problem

# Streaming multiprocessors of an H100/H200; heuristics aim for TARGET_PROGRAMS (two waves).
SM_COUNT = 132
TARGET_PROGRAMS = 2 * SM_COUNT
# Shared memory one block may use on sm_90 (227 KB); sm_80 allows 163 KB. An SM has 228 KB for all its blocks.
SMEM_PER_BLOCK = 227 * 1024
SMEM_PER_SM = 228 * 1024


def tensor_memory_accelerator() -> bool:
    """Whether the current GPU loads tiles through tensor descriptors in hardware (TMA: sm_90 and later),
    or there is no GPU (Triton's interpreter runs descriptor loads, and bench.static compiles for sm_90)."""
    return not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 9


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for b > 0, in plain Python: triton.cdiv is a Triton function, costly to call from host
    code."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain Python, as `cdiv`."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def power_of_2_dividing(values: Sequence[int], limit: int) -> int:
    """The largest power of two, at most `limit` (a power of two), that divides every value (0 included)."""
    return min([limit, *(v & -v for v in values if v)])


def pow2_clamp(value: int, low: int, high: int) -> int:
    """The next power of two >= value, clamped to [low, high]."""
    return max(low, min(high, next_power_of_2(value)))


def fewest_idle(n: int, sizes: list[int]) -> int:
    """The block size among `sizes` whose blocks cover n items with the fewest idle slots (the largest of
    equals): 16 for 144 channels among 8-128 (none idle) rather than 64 (a quarter idle)."""
    return min(sizes, key=lambda b: (cdiv(n, b) * b, -b))


def gemm_blocks(problem: Problem, interpreter: bool) -> dict[str, int]:
    """BLOCK_M/N/K for a GEMM-shaped kernel (tl.dot needs every block >= 16).

    On a GPU: 64 columns and 64 (16-bit) or 32 (float32) reduction elements per step, so two operand
    tiles of a 3-stage pipeline fit shared memory comfortably; 128-row tiles when there is enough work
    to fill SM_COUNT SMs, else 64 so that more programs run. In the interpreter: one tile as large as the
    tiny test problem, since the interpreter pays per program.
    """
    if interpreter:
        return {"BLOCK_M": pow2_clamp(problem.m, 16, 128), "BLOCK_N": pow2_clamp(problem.n, 16, 64),
                "BLOCK_K": pow2_clamp(problem.k, 16, 32)}
    block_m = 128 if problem.m * problem.batch >= 128 * SM_COUNT else 64
    block_k = 64 if problem.dtype != torch.float32 else 32
    return {"BLOCK_M": block_m, "BLOCK_N": pow2_clamp(problem.n, 16, 64), "BLOCK_K": pow2_clamp(problem.k, 16, block_k)}
