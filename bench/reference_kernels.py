"""The cost model's yardsticks (bench/cost.py): a plain tiled GEMM and a copy, written the textbook way.

Each implicit-GEMM launch is compared with `matmul_kernel` on the same M, N, K (and batch), each
memory-bound launch with `copy_kernel` over the same bytes, both compiled and modelled exactly as our
kernels are. They live in bench/, not in the library: nothing calls them but the cost model.
"""

import triton
import triton.language as tl


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,   # C[b] = A[b] @ B[b]: A (batch, M, K), B (batch, K, N), C (batch, M, N)
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    DOT_PRECISION: tl.constexpr,  # "tf32" or "ieee" for float32 operands, as the kernel compared with
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,        # M-tiles that walk one N-tile, for L2 reuse of B
):
    """Triton's matmul tutorial: grouped tile order, one K loop that the compiler pipelines, float32
    accumulation. Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), batch)."""
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles_per_group = GROUP_M * num_n
    first_m = pid // tiles_per_group * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + pid % tiles_per_group % group_rows
    pid_n = pid % tiles_per_group // group_rows

    # Rows and columns past the edge wrap around (the tutorial's trick): their results are never stored.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + batch * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + batch * stride_cb + rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def copy_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    """dst = src over `numel` contiguous elements, BLOCK per program. Grid: (cdiv(numel, BLOCK),)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)
