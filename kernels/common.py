"""Helpers shared by the kernels: operand products, index widths, program-to-tile maps, stride inversion;
and the kernel that sums split-K partial sums in a fixed order.

Index widths. Three policies, each chosen for what its kernels do with their indices:
- Implicit-GEMM convolution (kernels/conv.py): offsets are int32 unless the INT64 constexpr is set (see
  `as_index`). The launcher sets it when any operand reaches 2^30 elements into its storage. Those kernels
  hold whole 2-D tiles of pointer offsets (BLOCK_M x BLOCK_K per operand) across the reduction loop;
  64-bit offsets would double those registers and spill the large tiles (`python -m bench.static` shows
  it), so the common case stays 32-bit and only a huge tensor pays for 64-bit.
- GEMMs over flat pixel rows (kernels/pointwise.py, kernels/separable.py): the flat pixel index
  (n, oh, ow) is int32 and every memory offset is int64 (kernels/separable.py: int32 unless its INT64
  constexpr is set, as in conv, since its depthwise part forms an address per load and tap). Dividing a pixel index into (n, oh, ow) in int64
  is a branchy subroutine that costs many registers per thread (and spilled once rematerialised in an
  epilogue's layout), while a 1-D row of int64 offsets costs little; the host keeps the pixel count
  below 2^31 (`int32_batches` cuts a larger batch into runs that fit), so int32 never overflows.
- Every other kernel (depthwise, pooling, dropout but DropBlock's apply pass, which follows conv's INT64
  policy within a sample): offsets and Philox counters are int64 throughout.
  They are memory-bound loops over small tiles, where the wider offsets cost no occupancy that matters,
  and a tensor over 2^31 elements then indexes correctly with no host-side case.
"""

import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b in float32.

    UPCAST converts both operands to float32 first. The dispatcher sets it only for bfloat16 under
    Triton's interpreter, whose bf16 `tl.dot` multiplies raw bit patterns (upstream #11584); on a GPU it
    is False and compiles away. DOT_PRECISION is "tf32" or "ieee" for float32 operands (it follows
    torch.backends.cudnn.allow_tf32) and is ignored for 16-bit ones.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def known_multiple(value, ALIGN: tl.constexpr):
    """`value`, a multiple of ALIGN, stated so that the compiler knows it. Of integer arguments it knows
    divisibility by 16 only, so an address built from a stride of 24 or a mask against 196 positions
    splits every vector access into single elements; value // ALIGN * ALIGN (a shift pair, or nothing for
    ALIGN 1) carries the divisibility into the addresses and masks made from it. The launcher promises
    ALIGN divides value (a wrong promise gives wrong addresses)."""
    return value // ALIGN * ALIGN


@triton.jit
def as_index(offsets, INT64: tl.constexpr):
    """`offsets` as the index type of the launch: int64 when INT64, else unchanged (int32)."""
    if INT64:
        offsets = offsets.to(tl.int64)
    return offsets


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """The (M-tile, N-tile) of program `pid` in grouped order: GROUP_M consecutive M-tiles walk the same
    N-tile, so an N-tile of the second operand (the weights) is fetched from DRAM once and reused from
    L2 (the ordering of Triton's matmul tutorial)."""
    tiles_per_group = GROUP_M * num_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    return first_m + (pid % tiles_per_group) % group_rows, (pid % tiles_per_group) // group_rows


@triton.jit
def sample_channel_blocks(pid, num_c, num_p):
    """Split a flat program id over (sample, channel block, pixel block), pixel blocks fastest, with
    scalar arithmetic only: the sample n (int64), the channel block and the pixel block of `pid`, for
    num_c channel blocks and num_p pixel blocks per sample."""
    # Unsigned: every operand is a count or an index, and an unsigned division by a runtime value is
    # about half the instructions of a signed one (no sign corrections).
    # (tl.cast: a count may be a compile-time constant, as for a size Triton specialised to 1.)
    pid, num_c, num_p = tl.cast(pid, tl.uint32), tl.cast(num_c, tl.uint32), tl.cast(num_p, tl.uint32)
    pid_p = pid % num_p
    rest = pid // num_p
    pid_c = rest % num_c
    n = (rest // num_c).to(tl.int64)
    return n, pid_c.to(tl.int32), pid_p.to(tl.int32)


@triton.jit
def sample_channel_pixel_tile(pid, C, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program `pid`'s tile over (N, C, P pixels), pixel blocks fastest: its sample n (int64), its
    BLOCK_C channels and its BLOCK_P flat pixel indices (int32; either may run past C or P)."""
    n, pid_c, pid_p = sample_channel_blocks(pid, tl.cdiv(C, BLOCK_C), tl.cdiv(P, BLOCK_P))
    return n, pid_c * BLOCK_C + tl.arange(0, BLOCK_C), pid_p * BLOCK_P + tl.arange(0, BLOCK_P)


@triton.jit
def plane_tile(t, rows, cols, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Coordinates of tile `t` of a rows x cols plane cut into BLOCK_H x BLOCK_W tiles, row-major.

    Returns the tile's rows as an int64 (BLOCK_H, 1, 1) tensor and its columns as (1, BLOCK_W, 1), ready
    to broadcast against a (BLOCK_H, BLOCK_W, BLOCK_C) tile; they may run past the plane's edge.
    """
    tiles_w = tl.cast(tl.cdiv(cols, BLOCK_W), tl.uint32)  # unsigned, as in sample_channel_blocks
    t = tl.cast(t, tl.uint32)
    return tile_pixels((t // tiles_w).to(tl.int32), (t % tiles_w).to(tl.int32), BLOCK_H, BLOCK_W)


@triton.jit
def tile_pixels(tile_row, tile_col, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The rows (int64, (BLOCK_H, 1, 1)) and columns (int64, (1, BLOCK_W, 1)) of the tile in tile row
    `tile_row` and tile column `tile_col` of a plane cut into BLOCK_H x BLOCK_W tiles (`plane_tile`)."""
    r = tile_row * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tile_col * BLOCK_W + tl.arange(0, BLOCK_W)
    return r.to(tl.int64)[:, None, None], c.to(tl.int64)[None, :, None]


@triton.jit
def inverse_stride(t, stride, size):
    """The output position o that a backward gather reaches, and whether it exists.

    An input row ih is tap k of output row o when o*stride - pad + k*dil == ih, i.e. when
    t = ih + pad - k*dil is a non-negative multiple of the stride (o = t / stride) and o < size; the
    same holds for columns. Returns (o, valid); o is meaningless where not valid (callers mask it).
    """
    o = t // stride
    return o, (t >= 0) & (o * stride == t) & (o < size)


@triton.jit
def split_sum_kernel(
    parts_ptr,  # float32 (SPLITS, NUMEL), contiguous: the partial sums of each split
    out_ptr,    # (NUMEL,) contiguous, any float dtype
    NUMEL,
    SPLITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[i] = sum over s = 0, 1, ..., SPLITS-1 of parts[s, i], added in that order in float32, so the
    result is the same bit for bit on every run. Grid: (cdiv(NUMEL, BLOCK),)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < NUMEL
    parts = parts_ptr + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in tl.static_range(SPLITS):  # unrolled: every split's load can be in flight at once
        acc += tl.load(parts, mask=mask, other=0.0)
        parts += NUMEL
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
