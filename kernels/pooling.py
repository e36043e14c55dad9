"""Max pooling kernels: F.max_pool2d, max-pooling dropout (Wu & Gu 2015) and its weighted-pooling eval.

Notation: x (N, C, H, W) -> y (N, C, OH, OW). The window of output (oh, ow) has taps (kh, kw) in
[0, KH) x [0, KW), reading x at

    ih = oh*sh - ph + kh*dh,   iw = ow*sw - pw + kw*dw,

and tap t = kh*KW + kw. Taps outside the input are not units of the window (max pooling pads with -inf).
r = n*C + c indexes a feature map.

Which tap wins. F.max_pool2d scans the taps in order t = 0, 1, ... and takes a value when it is greater
than the best so far or is NaN; so among equal maxima the first tap wins, and among NaNs the last. `_wins`
states that order for any visiting order, which lets the dropout mode visit units block by block and
still pick exactly the unit F.max_pool2d would pick among the kept ones.

Backward without an int64 index tensor. The forward stores, per output, the winning tap t as one byte
(uint8; int32 for windows of more than 254 taps) instead of torch's int64 input offset, and KH*KW where
no unit was kept. The input gradient is then a gather: each input pixel visits the windows that contain
it (only the ((K-1)*d)//s + 1 per axis that can, not one per tap), and adds dy where that
window's byte names the pixel's tap. No atomics, deterministic. For the common windows (2x2, 3x3 at
strides 1-3) a lane takes a cell of pixels that share their windows, and loads each window once; at
stride 1 in NCHW, a row of a cell's windows is two vector loads of 4 columns (ROW_RUNS).

Max-pooling dropout. Every input unit is kept by one 16-bit Philox draw, shared by all the windows that
contain it: the units form blocks of 2 rows x 4 columns, block (bh, bw) = (ih//2, iw//4) of map r is
counter (r * ceil(H/2) + bh) * ceil(W/4) + bw, and unit (ih, iw) takes 16-bit half j = 4*(ih%2) + iw%4 of
the call's four words (word j//2, the high half for odd j). A unit is kept when its half u satisfies
u >= round(p * 2^16): the drop probability is p rounded to a multiple of 2^-16 (exactly 0 and 1 at the
ends). So one `tl.randint4x` call serves eight units. The key is the unit's logical position, never
the tiling, so every window, path and layout sees the same draw. The output is the max of the kept
units, 0 when none is kept.

VGG's 2x2 stride-2 windows (PAIRS): one 2x4 block holds exactly the windows of the output pair
(oh, 2q) and (oh, 2q+1), so the program's lanes are output pairs: one call per pair draws each unit
of its patch once, and each of the block's two rows is one contiguous 4-unit load along W. Other
common windows (2x2, 3x3 at strides 1-3, `_window_cells`) give each lane a cell of outputs whose
patch it draws and loads once. The halo blocks left and right of a cell's own are its neighbours' own:
where a program holds whole rows of cells it gathers their words from the lanes beside it; the halo rows
above and below, and the side halos elsewhere, are drawn by both cells.
There a 16-bit unit becomes one integer key whose max is the window's winner (`_unit_key`), so each
of a window's taps costs one integer max.
Any other geometry walks the blocks its window overlaps (SPAN_H x SPAN_W of them), each unit offered to
the window by `_dropout_unit`.

Weighted pooling (eval). With the window's n units sorted descending v_1 >= ... >= v_n, the training
output is v_i with probability (1-p) p^(i-1); its expectation is y = sum_i (1-p) p^(i-1) v_i. Each unit's
rank i-1 is counted by comparing it with every other unit of its window (ties broken by tap), which costs
(KH*KW)^2 comparisons per output and holds only two values at a time. The forward's common windows (2x2,
3x3) instead sort their units in registers with a sorting network (5 or 25 comparators, no ranks: equal
values are interchangeable in the sum), each lane taking a cell of outputs and loading its patch once
(`_window_cells`) where the cells of the dropout mode apply; the backward's cells load the patch under the
cell's windows once and compare each (unit, other unit of a shared window) pair once.

All offsets and Philox counters are int64.
"""

import triton
import triton.language as tl

from tritonconv.kernels.common import sample_channel_pixel_tile

# What max_pool2d_forward_kernel computes per window.
MAX = tl.constexpr(0)        # the max, as F.max_pool2d
DROPOUT = tl.constexpr(1)    # the max of the units Philox keeps, 0 if none
WEIGHTED = tl.constexpr(2)   # probabilistic weighted pooling, sum_i (1-p) p^(i-1) v_i
# 2^_DROP_SHIFT is subtracted from the key (`_unit_key`) of a unit no window may take, once for each of: it is
# dropped, its row lies outside the input, its column does. Once puts a key (at most 0x7FFFFFF) below every
# window's empty key (`_empty_key`, above -0x18000000): 2^29 > 0x7FFFFFF + 0x18000000; three times does not
# overflow the lowest key (-0x7F80 * 4096 - 3 * 2^29 > -2^31).
_DROP_SHIFT = tl.constexpr(29)
_DROP = tl.constexpr(1 << _DROP_SHIFT.value)
# The value field (`_unit_key`) of a NaN: 0x7FFF, itself a NaN's bits, above +inf's 0x7C00 or 0x7F80; and of
# an empty window (`_empty_key`): below every unit's (-0x7F80 and up), and whose bits (`_key_max`,
# 0x8000 - EMPTY = 0x20000) keep 0, +0.0, in their low 16.
_NAN_ORDERED = tl.constexpr(0x7FFF)
_EMPTY_ORDERED = tl.constexpr(-0x18000)


@triton.jit
def _wins(v, tap, best, best_tap):
    """Whether unit (v, tap) replaces (best, best_tap) as the window's max, as F.max_pool2d decides
    whatever order units are visited in: NaN beats numbers and the later of two NaNs wins; otherwise the
    larger value wins and, of two equal values, the earlier tap."""
    v_nan = v != v
    best_nan = best != best
    return tl.where(v_nan, ~best_nan | (tap > best_tap),
                    ~best_nan & ((v > best) | ((v == best) & (tap < best_tap))))


@triton.jit
def _keep_weight(rank, p):
    """(1-p) p^rank, the probability that the unit of that rank is the training output; exact for p = 0
    (weight 1 for rank 0, else 0) and p = 1 (weight 0)."""
    return tl.where(rank == 0, 1.0, tl.exp2(rank.to(tl.float32) * tl.log2(p))) * (1.0 - p)


@triton.jit
def _window_rank(x_map, ih0, iw0, window_ok, v, tap, H, W, KH, KW, dil_h, dil_w, sxh, sxw):
    """The rank of unit (v, tap) in the window whose tap (0, 0) sits at (ih0, iw0): how many units of the
    window are larger, or equal with a smaller tap. So ranks are 0..n-1, ties broken by tap.

    x_map: pointers to each lane's feature map; window_ok: lanes whose window exists.
    """
    rank = tl.zeros_like(tap)
    # One flat loop over the taps, as everywhere in this file: nested loops over kh and kw make ptxas
    # spill the values that live across them (seen on sm_80 and sm_90).
    for t in range(KH * KW):
        ih = ih0 + (t // KW) * dil_h
        iw = iw0 + (t % KW) * dil_w
        ok = window_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        u = tl.load(x_map + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok, other=0.0).to(tl.float32)
        rank += (ok & ((u > v) | ((u == v) & (t < tap)))).to(tl.int32)
    return rank


# Sorting networks (descending) of the unrolled windows' 4 and 9 units: comparator (i, j), i < j, leaves the
# larger value at i. 9 units: sort the rows of three, then the columns, then merge (25 comparators, the
# fewest known for 9).
_SORT_4 = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))
_SORT_9 = ((0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (0, 3), (3, 6), (0, 3), (1, 4),
           (4, 7), (1, 4), (2, 5), (5, 8), (2, 5), (1, 3), (5, 7), (2, 6), (4, 6), (2, 4), (2, 3), (5, 6))


@triton.constexpr_function
def _comparators(taps):
    """The sorting network of a taps x taps window (taps 2 or 3)."""
    return len(_SORT_4) if taps == 2 else len(_SORT_9)


@triton.constexpr_function
def _comparator(taps, k, end):
    """Unit `end` (0: the upper, 1: the lower) of comparator k of a taps x taps window's network."""
    return (_SORT_4 if taps == 2 else _SORT_9)[k][end]


@triton.jit
def _exchange(values, I: tl.constexpr, J: tl.constexpr):
    """Comparator (I, J), I < J, of a sorting network over a tuple of values: the larger to I. NaN propagates
    to both ends (and so through the network to every rank): a window holding a NaN pools to NaN, as the
    weighted sum of its units does."""
    hi = tl.maximum(values[I], values[J], propagate_nan=tl.PropagateNan.ALL)
    lo = tl.minimum(values[I], values[J], propagate_nan=tl.PropagateNan.ALL)
    return values[:I] + (hi,) + values[I + 1:J] + (lo,) + values[J + 1:]


@triton.jit
def _window_units(x_map, ih0, iw0, valid, H, W, dil_h, dil_w, sxh, sxw, TAPS: tl.constexpr, dtype: tl.constexpr):
    """The TAPS x TAPS units of the window whose tap (0, 0) sits at (ih0, iw0), unrolled, as a tuple in tap
    order (-inf outside the input, converted to dtype) and a tuple of their inside-the-input flags. Each
    kernel row's bounds and offset are found once, each column's once (the compiler shares them)."""
    values = ()
    inside = ()
    for kh in tl.static_range(TAPS):
        ih = ih0 + kh * dil_h
        row_ok = valid & (ih >= 0) & (ih < H)
        x_row = x_map + ih.to(tl.int64) * sxh
        for kw in tl.static_range(TAPS):
            iw = iw0 + kw * dil_w
            ok = row_ok & (iw >= 0) & (iw < W)
            values += (tl.load(x_row + iw.to(tl.int64) * sxw, mask=ok, other=float("-inf")).to(dtype),)
            inside += (ok,)
    return values, inside


@triton.jit
def _weighted_window(x_map, ih0, iw0, valid, H, W, dil_h, dil_w, sxh, sxw, p, TAPS: tl.constexpr,
                     MIN_UNITS: tl.constexpr):
    """Weighted pooling of a TAPS x TAPS window whose tap (0, 0) sits at (ih0, iw0), unrolled: its units are
    loaded once (-inf outside the input, so they sort last), sorted in registers by a sorting network, and
    the i-th largest weighed (1-p) p^i for i below the window's count of units (`_weighted_sum`; equal values
    are interchangeable, so ties need no rule)."""
    values, inside = _window_units(x_map, ih0, iw0, valid, H, W, dil_h, dil_w, sxh, sxw, TAPS, tl.float32)
    units = tl.zeros_like(valid.to(tl.int32))
    for t in tl.static_range(TAPS * TAPS):
        units += inside[t].to(tl.int32)
    return _weighted_sum(values, units, p, TAPS, MIN_UNITS)


@triton.jit
def _weighted_sum(values, units, p, TAPS: tl.constexpr, MIN_UNITS: tl.constexpr):
    """sum_i (1-p) p^i v_i over the `units` largest of a TAPS x TAPS window's values (a tuple in any order,
    -inf for the taps outside the input, so that they sort last), sorted by the window's network. Every
    window has at least MIN_UNITS units, so the ranks below need no test."""
    for k in tl.static_range(_comparators(TAPS)):
        values = _exchange(values, _comparator(TAPS, k, 0), _comparator(TAPS, k, 1))
    out = tl.zeros_like(values[0])
    weight = 1.0 - p
    for i in tl.static_range(TAPS * TAPS):
        if i < MIN_UNITS:
            out += values[i] * weight
        else:
            out += tl.where(units > i, values[i], 0.0) * weight
        weight = weight * p
    return out


@triton.jit
def _dropout_unit(half, ih, iw, ih0, iw0, window_ok, best, best_tap, x_map, threshold,
                  H, W, KH, KW, dil_h, dil_w, sxh, sxw):
    """Offer input unit (ih, iw), whose 16-bit Philox draw is `half`, to each lane's window: it competes
    when it is a tap of the window (an offset from the window's origin that is a multiple of the
    dilation, within KH x KW taps), lies inside the input and is kept (half >= threshold)."""
    dh = ih - ih0
    dw = iw - iw0
    kh = dh // dil_h
    kw = dw // dil_w
    is_tap = (dh >= 0) & (dw >= 0) & (kh * dil_h == dh) & (kw * dil_w == dw) & (kh < KH) & (kw < KW)
    kept = window_ok & is_tap & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & (half.to(tl.int32) >= threshold)
    v = tl.load(x_map + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=kept, other=0.0).to(tl.float32)
    tap = kh * KW + kw
    take = kept & _wins(v, tap, best, best_tap)
    return tl.where(take, v, best), tl.where(take, tap, best_tap)


@triton.jit
def _scan_tap(v, kept, t, best, best_tap, KK):
    """Offer tap t (value v, kept or not) to running maxima that have seen the taps before t: F.max_pool2d's
    own test, greater or NaN (a later NaN replaces an earlier one), and the first kept tap is taken
    whatever it holds, so that an all -inf window names it as torch does."""
    take = kept & ((v > best) | (v != v) | (best_tap == KK))
    return tl.where(take, v, best), tl.where(take, t, best_tap)


@triton.jit
def _pair_row(x_row, ok, w_even, w_odd, a, best, best_tap, threshold, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Offer row a of the 2x4 blocks of output pairs to their windows (PAIRS): x_row points at each pair's
    four units of the row ([ROWS, COLS // 2, 4], contiguous along W), w_even and w_odd are the Philox
    words of the row's units 0-1 and 2-3 ([ROWS, COLS // 2]); outputs (2q, 2q+1) of a pair are columns
    2q and 2q+1 of the [ROWS, COLS] results."""
    units = tl.load(x_row, mask=ok, other=0.0)
    # Unit 2e + b of the row is tap (a, b) of output e of the pair.
    left, right = tl.split(tl.reshape(units, (ROWS, COLS // 2, 2, 2)))
    words = tl.reshape(tl.join(w_even, w_odd), (ROWS, COLS))
    v0 = tl.reshape(left, (ROWS, COLS)).to(tl.float32)
    v1 = tl.reshape(right, (ROWS, COLS)).to(tl.float32)
    best, best_tap = _scan_tap(v0, (words & 0xFFFF).to(tl.int32) >= threshold, 2 * a, best, best_tap, 4)
    return _scan_tap(v1, (words >> 16).to(tl.int32) >= threshold, 2 * a + 1, best, best_tap, 4)


@triton.jit
def _half(r0, r1, r2, r3, J: tl.constexpr):
    """16-bit half J (0..7) of a Philox call's four words: word J // 2, its high half for odd J."""
    if J // 2 == 0:
        word = r0
    elif J // 2 == 1:
        word = r1
    elif J // 2 == 2:
        word = r2
    else:
        word = r3
    if J % 2 == 0:
        half = word & 0xFFFF
    else:
        half = word >> 16
    return half


@triton.jit
def _dropout_pairs(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, threshold, sxn, sxc, sxh, sxw,
                   syn, syc, syh, syw, STORE_INDEX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """max_pool2d_forward_kernel's DROPOUT mode for 2x2 stride-2 windows without padding or dilation
    (PAIRS): each lane is an output pair (oh, 2q), (oh, 2q+1), whose windows are exactly the units of the
    2x4 block (oh, q); one Philox call draws them, two 4-unit loads along W read them."""
    pairs_w = tl.cdiv(OW, 2)
    n, offs_c, offs_q = sample_channel_pixel_tile(tl.program_id(0), C, OH * pairs_w, BLOCK_C, BLOCK_P // 2)
    oh = offs_q // pairs_w
    q = offs_q % pairs_w
    pair_ok = (offs_c < C)[:, None] & (offs_q < OH * pairs_w)[None, :]
    rows = (n * C + offs_c.to(tl.int64))[:, None]
    counter = (rows * tl.cdiv(H, 2) + oh[None, :]) * tl.cdiv(W, 4) + q[None, :]
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), counter)

    # Units 4q .. 4q+3 of input row 2oh (a = 0) and 2oh + 1 (a = 1); units past W belong to no output.
    col = 4 * q[None, :, None] + tl.arange(0, 4)[None, None, :]
    x_row = (x_ptr + n * sxn + offs_c.to(tl.int64)[:, None, None] * sxc + (2 * oh).to(tl.int64)[None, :, None] * sxh
             + col.to(tl.int64) * sxw)
    ok = pair_ok[:, :, None] & (col < W)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    best_tap = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32) + 4   # 4: no unit yet
    best, best_tap = _pair_row(x_row, ok, r0, r1, 0, best, best_tap, threshold, BLOCK_C, BLOCK_P)
    best, best_tap = _pair_row(x_row + sxh, ok, r2, r3, 1, best, best_tap, threshold, BLOCK_C, BLOCK_P)
    out = tl.reshape(tl.where(best_tap == 4, 0.0, best), (BLOCK_C, BLOCK_P // 2, 2))

    ow = 2 * q[None, :, None] + tl.arange(0, 2)[None, None, :]
    y_offs = (n * syn + offs_c.to(tl.int64)[:, None, None] * syc + oh.to(tl.int64)[None, :, None] * syh
              + ow.to(tl.int64) * syw)
    out_ok = pair_ok[:, :, None] & (ow < OW)
    tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=out_ok)
    if STORE_INDEX:
        taps = tl.reshape(best_tap, (BLOCK_C, BLOCK_P // 2, 2))
        tl.store(idx_ptr + y_offs, taps.to(idx_ptr.dtype.element_ty), mask=out_ok)


@triton.constexpr_function
def _cell_blocks(first, stride, cell, taps, size):
    """Blocks of `size` units along an axis that hold a cell's patch: its `cell` windows at `stride`
    start `first` units into the first block and span (cell-1)*stride + taps units (`_window_cells`)."""
    return (first + (cell - 1) * stride + taps + size - 1) // size


@triton.constexpr_function
def _cell_unit(row, col, blocks_w):
    """Where unit (row, col) of a cell's patch sits in the tuple of its draws: block (row // 2, col // 4)
    of a patch blocks_w blocks wide, unit 4*(row % 2) + col % 4 of that block (the block's Philox half)."""
    return ((row // 2) * blocks_w + col // 4) * 8 + 4 * (row % 2) + col % 4


@triton.jit
def _scan_unit(values, kept, U: tl.constexpr, t, best, best_tap, KK):
    """`_scan_tap` of unit U of a patch held as tuples of values and keep flags (U a compile-time index)."""
    return _scan_tap(values[U], kept[U], t, best, best_tap, KK)


@triton.jit
def _along_c(v, CELLS_FIRST: tl.constexpr):
    """A per-channel vector as a column of the lane tile: (1, BLOCK_C) when CELLS_FIRST, else (BLOCK_C, 1)."""
    if CELLS_FIRST:
        out = v[None, :]
    else:
        out = v[:, None]
    return out


@triton.jit
def _along_p(v, CELLS_FIRST: tl.constexpr):
    """A per-cell vector as a row of the lane tile: (BLOCK_P, 1) when CELLS_FIRST, else (1, BLOCK_P)."""
    if CELLS_FIRST:
        out = v[:, None]
    else:
        out = v[None, :]
    return out


@triton.jit
def _window_cells(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, p, threshold, sxn, sxc, sxh: tl.constexpr,
                  sxw: tl.constexpr, syn, syc, syh, syw, WEIGHTED: tl.constexpr, STORE_INDEX: tl.constexpr,
                  TAPS: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, MIN_UNITS: tl.constexpr,
                  CELL_H: tl.constexpr, CELL_W: tl.constexpr, CELLS_W: tl.constexpr, CELLS_FIRST: tl.constexpr,
                  RUNS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """max_pool2d_forward_kernel's DROPOUT and WEIGHTED modes for a TAPS x TAPS window at STRIDE, padding
    PAD, undilated: each lane takes a cell of CELL_H x CELL_W outputs, draws the 2x4 blocks of units under
    their windows once (one Philox call per block, not one per window that overlaps it; WEIGHTED draws none)
    and loads each unit once; each output scans (WEIGHTED: sorts) its taps, all of them compile-time
    positions in the lane's patch, as soon as the rows of blocks under its window are loaded.

    CELL_H * STRIDE is even and CELL_W * STRIDE a multiple of 4, so every cell's patch starts at the same
    offset into its first block, (-PAD) mod 2 rows and (-PAD) mod 4 columns.

    Lanes are cells of a grid CELLS_W cells wide (the launcher's `PoolGeometry.window_cell_lanes`: at least
    the cells a row of outputs needs, and enough that their own columns, below, cover the input's width).
    When a program's lanes are whole rows of that grid (BLOCK_P a multiple of CELLS_W, a power of two),
    neighbouring lanes share their draws (SHARE): a cell's own blocks are the OWN_W columns of blocks under
    its CELL_W outputs' strides, CELL_W * STRIDE input columns from column uw * CELL_W * STRIDE; the blocks
    its windows reach left and right of them are its neighbours' own, which the lane gathers from the lanes
    beside it instead of drawing (warp shuffles in NCHW, where a row of cells lies in a warp; shared memory
    in channels_last). The first lane of a row has no left neighbour and needs none (its
    halo lies left of column 0); the last lane's right halo lies right of the grid's own columns, so past W.

    CELLS_FIRST (channels_last): the lane tile is (cells, channels), channels along its fast axis as along
    memory's, so that the loads keep the layout the keep flags are computed in (transposed, every masked
    load's flag went through shared memory)."""
    FIRST_H: tl.constexpr = (2 - PAD % 2) % 2
    FIRST_W: tl.constexpr = (4 - PAD % 4) % 4
    BLOCKS_H: tl.constexpr = _cell_blocks(FIRST_H, STRIDE, CELL_H, TAPS, 2)
    BLOCKS_W: tl.constexpr = _cell_blocks(FIRST_W, STRIDE, CELL_W, TAPS, 4)
    # Blocks of the patch's row left of the cell's own (its first own block is the patch's LEFT_W-th), and
    # its own: the halo on either side is at most one neighbour's own blocks.
    LEFT_W: tl.constexpr = (PAD + FIRST_W) // 4
    OWN_W: tl.constexpr = CELL_W * STRIDE // 4
    SHARE: tl.constexpr = BLOCK_P % CELLS_W == 0
    tl.static_assert(LEFT_W <= OWN_W and BLOCKS_W <= LEFT_W + 2 * OWN_W)
    KK: tl.constexpr = TAPS * TAPS
    # Runs are along W: the (channels, cells) tile of NCHW.
    tl.static_assert(not (RUNS and CELLS_FIRST))
    # 16-bit units are scanned as integer keys (`_unit_key`): one integer max per tap and a few instructions
    # per output to decode, for a key's few instructions per unit, which repays at every stride (a unit is
    # a tap of up to KK windows at stride 1, of about KK / 4 at stride 2).
    KEYED: tl.constexpr = x_ptr.dtype.element_ty != tl.float32 and not WEIGHTED
    # WEIGHTED sorts the units outside the input last as -inf (`_weighted_sum`); DROPOUT drops them.
    OUTSIDE: tl.constexpr = float("-inf") if WEIGHTED else 0.0
    tl.static_assert(not (WEIGHTED and STORE_INDEX))
    # A key codes its unit's patch row and column as TAPS * row + column in 12 bits (`_unit_key`).
    tl.static_assert(not KEYED or TAPS * (2 * BLOCKS_H + 1) + 4 * BLOCKS_W + KK < 4096)
    cells = tl.cdiv(OH, CELL_H) * CELLS_W
    n, offs_c, offs_u = sample_channel_pixel_tile(tl.program_id(0), C, cells, BLOCK_C, BLOCK_P)
    uh = offs_u // CELLS_W
    uw = offs_u % CELLS_W
    lane_ok = _along_c(offs_c < C, CELLS_FIRST) & _along_p(offs_u < cells, CELLS_FIRST)
    # Each lane's index along the tile's cell axis, for the gathers of SHARE.
    lane = tl.broadcast_to(_along_p(tl.arange(0, BLOCK_P), CELLS_FIRST), lane_ok.shape)
    x_map = x_ptr + n * sxn + _along_c(offs_c.to(tl.int64) * sxc, CELLS_FIRST)
    rows = _along_c(n * C + offs_c.to(tl.int64), CELLS_FIRST)
    if not WEIGHTED:
        seed = tl.load(seed_ptr)
    # The cell's first block: its patch starts at input row uh*CELL_H*STRIDE - PAD, FIRST_H rows into it.
    bh0 = uh * (CELL_H * STRIDE // 2) - (PAD + FIRST_H) // 2
    bw0 = uw * (CELL_W * STRIDE // 4) - (PAD + FIRST_W) // 4

    # Draw and load the patch, block by block (unit j of block (a, b) is half j of its call), a row of blocks
    # at a time; after each row, the cell's outputs whose windows it completes are scanned and stored. The
    # code is unrolled, so a unit's registers are free after the last window that reads it: a thread holds
    # about two rows of blocks, not the patch, and a cell can be tall (fewer blocks drawn twice, by two
    # cells) without spilling.
    values = ()
    kept = ()
    y_map = n * syn + _along_c(offs_c.to(tl.int64) * syc, CELLS_FIRST)   # each lane's map in y and idx
    # Each lane's unit (2*bh0, 4*bw0), the patch's first block's first: unit (2*bh + i, 4*bw + k) sits
    # ((2*(bh - bh0) + i) * sxh + (4*(bw - bw0) + k) * sxw) elements on, a constant (an immediate of the load).
    x_patch = x_map + _along_p((2 * bh0).to(tl.int64) * sxh + (4 * bw0).to(tl.int64) * sxw, CELLS_FIRST)
    for a in tl.static_range(BLOCKS_H):
        bh = bh0 + a
        first = (rows * tl.cdiv(H, 2) + _along_p(bh, CELLS_FIRST)) * tl.cdiv(W, 4) + _along_p(bw0, CELLS_FIRST)
        if not WEIGHTED:
            drawn = _own_words(seed, first, SHARE, LEFT_W, OWN_W)
        for b in tl.static_range(BLOCKS_W):
            bw = bw0 + b
            if not WEIGHTED:
                r0, r1, r2, r3 = _block_words(seed, first, b, drawn, lane, SHARE, LEFT_W, OWN_W, BLOCK_P,
                                              CELLS_FIRST)
            if RUNS:
                # NCHW rows: the block's two rows of four units, each one vector load masked by the whole chunk's
                # bounds (a unit's own bounds and keep flag enter below).
                units = ()
                for i in tl.static_range(2):
                    ih = 2 * bh + i
                    row_ok = lane_ok & ((ih >= 0) & (ih < H) & (4 * bw >= 0) & (4 * bw < W))[None, :]
                    units += _columns(tl.load(x_patch[:, :, None] + ((2 * a + i) * sxh + 4 * b + tl.arange(0, 4)),
                                              mask=row_ok[:, :, None], other=OUTSIDE), BLOCK_C, BLOCK_P)
            for j in tl.static_range(8):
                ih = 2 * bh + j // 4
                iw = 4 * bw + j % 4
                ok = lane_ok & _along_p((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), CELLS_FIRST)
                if RUNS:
                    v = units[j]
                else:
                    # Masked by the bounds only: the load does not wait for the draw, and no keep flag stays
                    # live as a predicate until its load.
                    v = tl.load(x_patch + ((2 * a + j // 4) * sxh + (4 * b + j % 4) * sxw), mask=ok,
                                other=OUTSIDE)
                if not KEYED:
                    values += (v.to(tl.float32),)
                    if not WEIGHTED:
                        kept += (ok & (_half(r0, r1, r2, r3, j).to(tl.int32) >= threshold),)
                else:
                    half = _half(r0, r1, r2, r3, j).to(tl.int32)
                    # Kept when its margin half - threshold is >= 0 and it lies inside the input. The key's low
                    # bits 4095 - CODE, CODE = TAPS * row + column, come as a term per patch row and one per
                    # column (each shared by the lane's units of that row or column), each less 2^_DROP_SHIFT
                    # where its row or column lies outside the input: a select per row and column, not three
                    # per unit (its bounds and the lane's).
                    row_low = tl.where((ih >= 0) & (ih < H), 4095 - (2 * a + j // 4) * TAPS,
                                       4095 - (2 * a + j // 4) * TAPS - _DROP)
                    col_low = tl.where((iw >= 0) & (iw < W), -(4 * b + j % 4), -(4 * b + j % 4) - _DROP)
                    values += (_unit_key(v, half - threshold, _along_p(row_low, CELLS_FIRST)
                                         + _along_p(col_low, CELLS_FIRST), (2 * a + j // 4) * TAPS + 4 * b + j % 4),)

        for r in tl.static_range(CELL_H * CELL_W):
            # The window of output r has its tap (0, 0) at row R0 = FIRST_H + (r // CELL_W) * STRIDE of the
            # drawn patch, column C0 = FIRST_W + (r % CELL_W) * STRIDE; its last row is in block row a.
            if (FIRST_H + (r // CELL_W) * STRIDE + TAPS - 1) // 2 == a:
                _cell_output(values, kept, r, uh, uw, lane_ok, y_ptr, idx_ptr, y_map, 2 * bh0, 4 * bw0, H, W, OH,
                             OW, p, syh, syw, FIRST_H + (r // CELL_W) * STRIDE, FIRST_W + (r % CELL_W) * STRIDE,
                             WEIGHTED, STORE_INDEX, KEYED, TAPS, MIN_UNITS, BLOCKS_W, CELL_H, CELL_W, CELLS_FIRST)


@triton.jit
def _own_words(seed, first, SHARE: tl.constexpr, LEFT_W: tl.constexpr, OWN_W: tl.constexpr):
    """SHARE: the Philox words of each lane's own OWN_W blocks of a row of its patch (`_window_cells`),
    the LEFT_W-th block of the row on, four a block; the row's first block is Philox offset `first`.
    Otherwise none: `_block_words` draws each block where it is used."""
    drawn = ()
    if SHARE:
        for b in tl.static_range(LEFT_W, LEFT_W + OWN_W):
            r0, r1, r2, r3 = tl.randint4x(seed, first + b)
            drawn += (r0, r1, r2, r3)
    return drawn


@triton.jit
def _block_words(seed, first, b: tl.constexpr, drawn, lane, SHARE: tl.constexpr, LEFT_W: tl.constexpr,
                 OWN_W: tl.constexpr, BLOCK_P: tl.constexpr, CELLS_FIRST: tl.constexpr):
    """The four Philox words of block b of a row of each lane's patch (`_window_cells`): drawn here, or
    (SHARE) one of the lane's own (`_own_words`) or, for a halo block, its neighbour's own, gathered from the
    lane beside it (the words no unit uses are never gathered: dead code)."""
    if not SHARE:
        r0, r1, r2, r3 = tl.randint4x(seed, first + b)
    else:
        # The owner's side (-1 left, 1 right, 0 the lane itself) and the block's index among its own.
        SIDE: tl.constexpr = -1 if b < LEFT_W else (1 if b >= LEFT_W + OWN_W else 0)
        I: tl.constexpr = 4 * (b - LEFT_W - SIDE * OWN_W)
        r0, r1, r2, r3 = drawn[I], drawn[I + 1], drawn[I + 2], drawn[I + 3]
        if SIDE != 0:
            AXIS: tl.constexpr = 0 if CELLS_FIRST else 1
            owner = tl.minimum(tl.maximum(lane + SIDE, 0), BLOCK_P - 1)
            r0 = tl.gather(r0, owner, AXIS)
            r1 = tl.gather(r1, owner, AXIS)
            r2 = tl.gather(r2, owner, AXIS)
            r3 = tl.gather(r3, owner, AXIS)
    return r0, r1, r2, r3


@triton.jit
def _cell_output(values, kept, r: tl.constexpr, uh, uw, lane_ok, y_ptr, idx_ptr, y_map, ih_patch, iw_patch, H, W,
                 OH, OW, p, syh, syw, R0: tl.constexpr, C0: tl.constexpr, WEIGHTED: tl.constexpr,
                 STORE_INDEX: tl.constexpr, KEYED: tl.constexpr, TAPS: tl.constexpr, MIN_UNITS: tl.constexpr,
                 BLOCKS_W: tl.constexpr, CELL_H: tl.constexpr, CELL_W: tl.constexpr, CELLS_FIRST: tl.constexpr):
    """Scan (WEIGHTED: sort) and store output r of each lane's cell (`_window_cells`), whose window's tap
    (0, 0) is unit (R0, C0) of the patch, held as tuples of values (keys when KEYED) and keep flags (neither
    KEYED nor WEIGHTED); the patch's unit (0, 0) is input pixel (ih_patch, iw_patch)."""
    KK: tl.constexpr = TAPS * TAPS
    if WEIGHTED:
        # The window's units inside the input: its rows inside times its columns inside (one count per row
        # and per column of the cell's outputs, shared by their windows).
        rows = tl.zeros_like(uh)
        cols = tl.zeros_like(uw)
        window = ()
        for k in tl.static_range(TAPS):
            rows += ((ih_patch + (R0 + k) >= 0) & (ih_patch + (R0 + k) < H)).to(tl.int32)
            cols += ((iw_patch + (C0 + k) >= 0) & (iw_patch + (C0 + k) < W)).to(tl.int32)
        for t in tl.static_range(KK):
            window += (values[_cell_unit(R0 + t // TAPS, C0 + t % TAPS, BLOCKS_W)],)
        out = _weighted_sum(window, _along_p(rows * cols, CELLS_FIRST), p, TAPS, MIN_UNITS)
        out = out.to(y_ptr.dtype.element_ty)
    elif not KEYED:
        best = tl.where(lane_ok, float("-inf"), float("-inf"))
        best_tap = tl.where(lane_ok, KK, KK)   # KK: no unit yet
        for t in tl.static_range(KK):
            best, best_tap = _scan_unit(values, kept, _cell_unit(R0 + t // TAPS, C0 + t % TAPS, BLOCKS_W), t, best,
                                        best_tap, KK)
        out = tl.where(best_tap == KK, 0.0, best).to(y_ptr.dtype.element_ty)
    else:
        best = tl.full(lane_ok.shape, _empty_key(R0 * TAPS + C0, KK), tl.int32)
        for t in tl.static_range(KK):
            best = tl.maximum(best, values[_cell_unit(R0 + t // TAPS, C0 + t % TAPS, BLOCKS_W)])
        out, best_tap = _key_max(best, R0 * TAPS + C0, y_ptr.dtype.element_ty)
    oh = uh * CELL_H + r // CELL_W
    ow = uw * CELL_W + r % CELL_W
    ok = lane_ok & _along_p((oh < OH) & (ow < OW), CELLS_FIRST)
    y_offs = _along_p(oh.to(tl.int64) * syh + ow.to(tl.int64) * syw, CELLS_FIRST)
    tl.store(y_ptr + y_map + y_offs, out, mask=ok)
    if STORE_INDEX:
        tl.store(idx_ptr + y_map + y_offs, best_tap.to(idx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _unit_key(v, margin, low, CODE: tl.constexpr):
    """A 16-bit unit (float16 or bfloat16) as an int32 key whose signed max is `_wins`'s winner among the
    units of any window of a patch (`_window_cells`), CODE = TAPS * row + column < 4096 being the unit's
    position in the patch: within a window (columns at most TAPS - 1 apart) codes run in the order of its
    taps, and a unit's tap is its code less that of the window's tap (0, 0). Bits 12 and up hold the value
    as a signed integer of the same order, its sign-magnitude bits made two's complement (so -0 and +0 are
    equal, as under >), or _NAN_ORDERED for NaN; bits 0-11 hold 4095 - CODE (of equal values the earlier
    tap wins; `low`, which the caller gives less 2^_DROP_SHIFT for each axis on which the unit lies outside
    the input) or, for NaN, CODE (the later NaN wins; a NaN is never outside: those units load as 0). A unit
    whose keep margin is negative (dropped) loses 2^_DROP_SHIFT. One integer max per tap then replaces the
    compare-and-select of `_scan_tap`."""
    if v.dtype == tl.float16:
        INF_BITS = 0x7C00
    else:
        INF_BITS = 0x7F80
    bits = v.to(tl.int16, bitcast=True).to(tl.int32)   # sign-extended: negative values are negative
    sign = bits >> 31                                   # 0 or -1
    ordered = (bits ^ (sign & 0x7FFF)) - sign           # -magnitude for negative values, else the magnitude
    key = tl.where((bits & 0x7FFF) > INF_BITS, _NAN_ORDERED * 4096 + CODE, ordered * 4096 + low)
    # The margin's sign (0 or -1) shifted, not a select: LLVM folds a select of a constant key into every
    # max that takes it (a SEL per window that reads the unit, not one per unit), and so it does the same
    # sign masked by an AND; the shift keeps one per unit (the cost model's SASS, 3x3 stride 1).
    return key + ((margin >> 31) << _DROP_SHIFT)


@triton.constexpr_function
def _empty_key(origin, taps):
    """The key a window's max starts from (`_unit_key`): below every kept unit's, above every dropped or
    outside one, and decoded by `_key_max` as +0.0 and tap `taps` (no unit kept) for the window whose tap
    (0, 0) has code `origin`."""
    return _EMPTY_ORDERED.value * 4096 + 4095 - (origin + taps)


@triton.jit
def _key_max(key, ORIGIN: tl.constexpr, dtype: tl.constexpr):
    """The output and winning tap of a window from the max of its units' keys (`_unit_key`) and its empty
    key (`_empty_key`), ORIGIN being the code of its tap (0, 0): the value's bits from the key's signed
    value (a NaN comes out as 0x7FFF, -0 as +0, an empty window as +0), the tap from the code."""
    ordered = key >> 12
    bits = tl.where(ordered < 0, 0x8000 - ordered, ordered)
    tap = tl.where(ordered == _NAN_ORDERED, (key & 0xFFF) - ORIGIN, (4095 - ORIGIN) - (key & 0xFFF))
    return bits.to(tl.int16).to(dtype, bitcast=True), tap


@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, y_ptr,   # input and output
    idx_ptr,        # per output, the winning tap (KH*KW for none), uint8 or int32 (STORE_INDEX only)
    seed_ptr,       # one int64, the Philox seed (DROPOUT only)
    # Sizes: x (N, C, H, W), y and idx (N, C, OH, OW); window KH x KW.
    C, H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    p,              # drop probability of a unit (WEIGHTED)
    threshold,      # DROPOUT: round(p * 2^16); a unit whose 16-bit draw u has u >= threshold is kept
    # Element strides of x and of y (idx has y's shape and memory format, so y's strides), (N, C, H, W) order.
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    MODE: tl.constexpr,          # MAX, DROPOUT or WEIGHTED
    STORE_INDEX: tl.constexpr,   # write the winning tap to idx, for the backward (MAX, DROPOUT)
    PAIRS: tl.constexpr,         # DROPOUT with 2x2 stride-2 windows, no padding or dilation: `_dropout_pairs`
    TAPS: tl.constexpr,          # MAX: the side of a common square window (2, 3), unrolled; 0 walks KH x KW
    MIN_UNITS: tl.constexpr,     # WEIGHTED with TAPS: the fewest units (taps inside the input) of any window
    SPAN_H: tl.constexpr,        # DROPOUT otherwise: 2x4 blocks of units a window overlaps, at most, down its rows
    SPAN_W: tl.constexpr,        # ... and along its columns
    CELL_H: tl.constexpr,        # DROPOUT and WEIGHTED, a TAPS x TAPS window at STRIDE, padding PAD: a lane takes
    CELL_W: tl.constexpr,        # CELL_H x CELL_W outputs (`_window_cells`); 0: not this path
    CELLS_W: tl.constexpr,       # CELL_H: lanes per row of cells (`_window_cells`)
    STRIDE: tl.constexpr,        # CELL_H: the stride and padding of both axes
    PAD: tl.constexpr,
    CELL_SXH: tl.constexpr,      # CELL_H: sxh and sxw as constants, so that the units of a cell's patch are constant
    CELL_SXW: tl.constexpr,      # offsets from one pointer (immediates of the loads); 0 on the other paths
    CELL_RUNS: tl.constexpr,     # CELL_H in NCHW, x's rows contiguous, W and sxh multiples of 4: a block row's four
                                 # units are one vector load (`_columns`), a 4-column chunk wholly in or out of a row
    CELLS_FIRST: tl.constexpr,   # CELL_H: the lanes' tile is (cells, channels) (channels_last), not (channels, cells)
    BLOCK_C: tl.constexpr,       # channels of one sample per program
    BLOCK_P: tl.constexpr,       # output pixels (oh, ow) per program (PAIRS: BLOCK_P // 2 pairs; CELL_H: cells)
):
    """One program computes BLOCK_C x BLOCK_P outputs of one sample. Grid:
    (N * cdiv(C, BLOCK_C) * cdiv(OH*OW, BLOCK_P),), pixel blocks fastest (PAIRS: OH * 2*cdiv(OW, 2)
    pixels, so that each pair is whole; CELL_H: cdiv(OH, CELL_H) * CELLS_W cells)."""
    if PAIRS:
        _dropout_pairs(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, threshold, sxn, sxc, sxh, sxw,
                       syn, syc, syh, syw, STORE_INDEX, BLOCK_C, BLOCK_P)
    elif CELL_H:
        _window_cells(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, p, threshold, sxn, sxc, CELL_SXH, CELL_SXW,
                      syn, syc, syh, syw, MODE == WEIGHTED, STORE_INDEX, TAPS, STRIDE, PAD, MIN_UNITS, CELL_H, CELL_W,
                      CELLS_W, CELLS_FIRST, CELL_RUNS, BLOCK_C, BLOCK_P)
    else:
        _forward_windows(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h,
                         pad_w, dil_h, dil_w, p, threshold, sxn, sxc, sxh, sxw, syn, syc, syh, syw, MODE,
                         STORE_INDEX, TAPS, MIN_UNITS, SPAN_H, SPAN_W, BLOCK_C, BLOCK_P)


@triton.jit
def _forward_windows(x_ptr, y_ptr, idx_ptr, seed_ptr, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w,
                     dil_h, dil_w, p, threshold, sxn, sxc, sxh, sxw, syn, syc, syh, syw, MODE: tl.constexpr,
                     STORE_INDEX: tl.constexpr, TAPS: tl.constexpr, MIN_UNITS: tl.constexpr, SPAN_H: tl.constexpr,
                     SPAN_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """max_pool2d_forward_kernel for any window: each lane one output, walking its window."""
    n, offs_c, offs_p = sample_channel_pixel_tile(tl.program_id(0), C, OH * OW, BLOCK_C, BLOCK_P)
    oh = offs_p // OW
    ow = offs_p % OW
    valid = (offs_c < C)[:, None] & (offs_p < OH * OW)[None, :]
    # Tap (0, 0) of each window, which may lie in the padding.
    ih0 = (oh * stride_h - pad_h)[None, :]
    iw0 = (ow * stride_w - pad_w)[None, :]
    x_map = x_ptr + n * sxn + offs_c.to(tl.int64)[:, None] * sxc
    KK = KH * KW

    if MODE == WEIGHTED and TAPS:
        out = _weighted_window(x_map, ih0, iw0, valid, H, W, dil_h, dil_w, sxh, sxw, p, TAPS, MIN_UNITS)
    elif MODE == WEIGHTED:
        out = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for t in range(KK):
            ih = ih0 + (t // KW) * dil_h
            iw = iw0 + (t % KW) * dil_w
            ok = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_map + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok, other=0.0).to(tl.float32)
            tap = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32) + t
            rank = _window_rank(x_map, ih0, iw0, valid, v, tap, H, W, KH, KW, dil_h, dil_w, sxh, sxw)
            out += tl.where(ok, _keep_weight(rank, p) * v, 0.0)
    else:
        best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
        best_tap = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32) + KK   # KK: no unit yet
        if MODE == MAX:
            # float16 is compared in its own dtype (exact: a max only selects), which spares a conversion
            # per tap; bfloat16 in float32, since Triton's interpreter compares bfloat16 as raw bits.
            if x_ptr.dtype.element_ty == tl.float16:
                best = best.to(tl.float16)
            if TAPS:
                # A common window (2x2, 3x3), unrolled.
                values, inside = _window_units(x_map, ih0, iw0, valid, H, W, dil_h, dil_w, sxh, sxw, TAPS,
                                               best.dtype)
                for t in tl.static_range(TAPS * TAPS):
                    best, best_tap = _scan_tap(values[t], inside[t], t, best, best_tap, KK)
            else:
                # The tap's offsets (kh*dil_h, kw*dil_w) advance by a step and a wrap instead of t // KW and
                # t % KW: a division by a runtime KW costs more than the rest of a tap's scalar work.
                off_h = 0
                off_w = 0
                for t in range(KK):
                    ih = ih0 + off_h
                    iw = iw0 + off_w
                    ok = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    v = tl.load(x_map + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok,
                                other=float("-inf")).to(best.dtype)
                    # Taps come in order here, so `_wins` reduces to F.max_pool2d's own test (`_scan_tap`).
                    best, best_tap = _scan_tap(v, ok, t, best, best_tap, KK)
                    off_w += dil_w
                    wrap = off_w == KW * dil_w
                    off_h += tl.where(wrap, dil_h, 0)
                    off_w = tl.where(wrap, 0, off_w)
            out = best
        else:
            # Walk the 2x4 blocks of units that cover the window, one Philox call per block: block (bh, bw)
            # holds units (2bh + j//4, 4bw + j%4), unit j drawing half j. The window's first block is
            # (floor(ih0 / 2), floor(iw0 / 4)), arithmetic shifts since ih0 and iw0 may be negative (padding).
            seed = tl.load(seed_ptr)
            rows = (n * C + offs_c.to(tl.int64))[:, None]
            for a in range(SPAN_H):
                bh = (ih0 >> 1) + a
                for b in range(SPAN_W):
                    bw = (iw0 >> 2) + b
                    counter = (rows * tl.cdiv(H, 2) + bh) * tl.cdiv(W, 4) + bw
                    r0, r1, r2, r3 = tl.randint4x(seed, counter)
                    for j in tl.static_range(8):
                        best, best_tap = _dropout_unit(_half(r0, r1, r2, r3, j), 2 * bh + j // 4, 4 * bw + j % 4,
                                                       ih0, iw0, valid, best, best_tap, x_map, threshold,
                                                       H, W, KH, KW, dil_h, dil_w, sxh, sxw)
            out = tl.where(best_tap == KK, 0.0, best)

    y_offs = (n * syn + offs_c.to(tl.int64)[:, None] * syc) + (oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[None, :]
    tl.store(y_ptr + y_offs, out.to(y_ptr.dtype.element_ty), mask=valid)
    if STORE_INDEX:
        tl.store(idx_ptr + y_offs, best_tap.to(idx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _containing_window(o_last, rem, j, stride, size, K, dil, DILATED: tl.constexpr):
    """Candidate j of the windows along one axis that may hold input position i as a tap.

    With a = i + pad, window o starts at o*stride - pad and holds i as tap k when a - o*stride = k*dil,
    0 <= k < K. o_last = a // stride is the last window starting at or before i, rem = a - o_last*stride
    its offset there; candidate j is window o_last - j, at offset rem + j*stride. Returns (o, k, valid);
    o and k are meaningless where not valid (callers mask them). The offset is divided by the dilation
    only when DILATED: undilated, the offset is the tap.
    """
    o = o_last - j
    off = rem + j * stride
    if DILATED:
        k = off // dil
        valid = (o >= 0) & (o < size) & (k * dil == off) & (k < K)
    else:
        k = off
        valid = (o >= 0) & (o < size) & (k < K)
    return o, k, valid


@triton.jit
def max_pool2d_backward_kernel(
    dy_ptr,         # output gradient
    idx_ptr,        # the forward's winning taps (not WEIGHTED)
    x_ptr,          # the forward's input (WEIGHTED)
    dx_ptr,         # input gradient, written once per element
    # Sizes: x and dx (N, C, H, W), dy and idx (N, C, OH, OW); window KH x KW.
    C, H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    p,              # drop probability (WEIGHTED)
    # Element strides in (N, C, H, W) order of dy, idx (not WEIGHTED), x (WEIGHTED) and dx. Those of rows and
    # columns are compile-time constants (a compile per shape), so that a cell's windows, units and pixels
    # sit at constant offsets from one pointer per lane: the immediates of its loads and stores.
    sdyn, sdyc, sdyh: tl.constexpr, sdyw: tl.constexpr,
    sidxn, sidxc, sidxh: tl.constexpr, sidxw: tl.constexpr,
    sxn, sxc, sxh: tl.constexpr, sxw: tl.constexpr,
    sdxn, sdxc, sdxh: tl.constexpr, sdxw: tl.constexpr,
    WEIGHTED: tl.constexpr,   # True: gradient of weighted pooling (recomputes ranks from x); False: route
                              # dy to the tap named in idx (MAX and DROPOUT)
    GATHER_H: tl.constexpr,   # windows down the rows that can hold one input row: ((KH-1)*dil_h) // stride_h + 1
    GATHER_W: tl.constexpr,   # ... and along the columns
    DILATED: tl.constexpr,    # dil_h > 1 or dil_w > 1: a tap offset must be divided by the dilation
    STRIDE: tl.constexpr,     # a common square stride (1, 2, 3) as a constant, so dividing by it is a multiply; 0: the
                              # runtime stride_h, stride_w (a stride of 1 is specialised by Triton itself)
    SAME_STRIDES: tl.constexpr,   # dy and idx have the same strides (not WEIGHTED): one offset serves both (CELL: 0)
    CELL: tl.constexpr,       # a TAPS x TAPS window at a STRIDE (1, 2, 3), no dilation: each lane takes
                              # CELL x CELL pixels (`_backward_cells`); 0: one pixel a lane
    ROW_RUNS: tl.constexpr,   # CELL at STRIDE 1, not WEIGHTED, dy and idx rows contiguous with row strides and OW
                              # multiples of 4: each row of a lane's windows is two vector loads of 4
                              # columns (`_chunk`), not NW loads of one
    TAPS: tl.constexpr,       # CELL: the window's side
    BLOCK_C: tl.constexpr,    # channels of one sample per program
    BLOCK_P: tl.constexpr,    # input pixels (ih, iw) per program (CELL: cells)
):
    """dx[n, c, ih, iw] = sum over the windows (oh, ow) holding (ih, iw) as tap t of dy[n, c, oh, ow] * g,
    with g = [idx[n, c, oh, ow] == t] (max) or g = (1-p) p^rank (weighted).

    Each pixel visits only the GATHER_H x GATHER_W windows that can contain it (`_containing_window`),
    an unrolled loop with no division: the pixel's last window along each axis is found once, by one
    division per pixel. Each dx element is written once: no atomics, deterministic.
    Grid: (N * cdiv(C, BLOCK_C) * cdiv(H*W, BLOCK_P),); CELL: cdiv(H + pad_h, CELL) * cdiv(W + pad_w, CELL)
    cells instead of H*W pixels.
    """
    if CELL:
        _backward_cells(dy_ptr, idx_ptr, x_ptr, dx_ptr, C, H, W, OH, OW, pad_h, pad_w, p, sdyn, sdyc, sdyh, sdyw,
                        sidxn, sidxc, sidxh, sidxw, sxn, sxc, sxh, sxw, sdxn, sdxc, sdxh, sdxw, WEIGHTED, TAPS,
                        STRIDE, CELL, ROW_RUNS, BLOCK_C, BLOCK_P)
    else:
        _backward_pixels(dy_ptr, idx_ptr, x_ptr, dx_ptr, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w,
                         dil_h, dil_w, p, sdyn, sdyc, sdyh, sdyw, sidxn, sidxc, sidxh, sidxw, sxn, sxc, sxh, sxw,
                         sdxn, sdxc, sdxh, sdxw, WEIGHTED, GATHER_H, GATHER_W, DILATED, STRIDE, SAME_STRIDES,
                         BLOCK_C, BLOCK_P)


@triton.jit
def _backward_cells(dy_ptr, idx_ptr, x_ptr, dx_ptr, C, H, W, OH, OW, pad_h, pad_w, p, sdyn, sdyc,
                    sdyh: tl.constexpr, sdyw: tl.constexpr, sidxn, sidxc, sidxh: tl.constexpr, sidxw: tl.constexpr,
                    sxn, sxc, sxh: tl.constexpr, sxw: tl.constexpr, sdxn, sdxc, sdxh: tl.constexpr,
                    sdxw: tl.constexpr, WEIGHTED: tl.constexpr,
                    TAPS: tl.constexpr, STRIDE: tl.constexpr, CELL: tl.constexpr,
                    ROW_RUNS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """max_pool2d_backward_kernel for a TAPS x TAPS window at stride STRIDE, undilated: each
    lane takes a cell of CELL x CELL input pixels (CELL a multiple of STRIDE), a = (ih + pad_h, iw + pad_w)
    in [CELL*u, CELL*u + CELL) per axis. All of a cell's pixels lie in the windows o = u*CELL/STRIDE - j,
    j = GATHER-1-w, w in [0, NW), with GATHER = (TAPS-1)//STRIDE + 1 and NW = GATHER + CELL/STRIDE - 1 per
    axis: the lane loads each of those windows' dy and tap once (not once per pixel that may sit in it),
    and pixel r of the cell sits in window w at tap k = r + (GATHER-1-w)*STRIDE, a constant: the tap
    compare is unrolled, and a (pixel, window) pair that is no tap costs nothing.

    WEIGHTED: instead of the taps, the lane loads once the PATCH x PATCH units under its windows (window w
    has its tap (0, 0) at patch position (w // NW, w % NW) * STRIDE), and ranks pixel r in window w by
    comparing it with that window's other units, all at compile-time patch positions (`_cell_rank`)."""
    GATHER: tl.constexpr = (TAPS - 1) // STRIDE + 1
    NW: tl.constexpr = GATHER + CELL // STRIDE - 1
    cells_w = tl.cdiv(W + pad_w, CELL)
    cells = tl.cdiv(H + pad_h, CELL) * cells_w
    n, offs_c, offs_u = sample_channel_pixel_tile(tl.program_id(0), C, cells, BLOCK_C, BLOCK_P)
    uh = offs_u // cells_w
    uw = offs_u % cells_w
    lane_ok = (offs_c < C)[:, None] & (offs_u < cells)[None, :]
    c64 = offs_c.to(tl.int64)[:, None]
    dy_map = dy_ptr + n * sdyn + c64 * sdyc
    idx_map = idx_ptr + n * sidxn + c64 * sidxc
    oh0 = uh * (CELL // STRIDE) - (GATHER - 1)
    ow0 = uw * (CELL // STRIDE) - (GATHER - 1)
    # The lane's first window (oh0, ow0), from which window w sits (w // NW, w % NW) windows on.
    dy_cell = dy_map + (oh0.to(tl.int64) * sdyh + ow0.to(tl.int64) * sdyw)[None, :]
    idx_cell = idx_map + (oh0.to(tl.int64) * sidxh + ow0.to(tl.int64) * sidxw)[None, :]
    grads = ()
    taps = ()
    if ROW_RUNS:
        # Stride 1, CELL 4: the lane's windows of row oh are columns ow0 + j = 4*uw - (GATHER-1) + j, j < NW,
        # all within the 8 columns from 4*uw - 4 (GATHER <= 5): two chunks of 4 that start on multiples of 4,
        # so a row is two vector loads of dy and two of idx. OW is a multiple of 4: a chunk is all in or all
        # out of the row, so its mask is the lane's, and the loads stay vector loads.
        for i in tl.static_range(NW):
            oh = oh0 + i
            row_ok = lane_ok & ((oh >= 0) & (oh < OH))[None, :]
            dy_row = ()
            idx_row = ()
            for q in tl.static_range(2):
                ow = uw * 4 - 4 + 4 * q   # the chunk's first column
                ok = row_ok & ((ow >= 0) & (ow < OW))[None, :]
                dy_row += _chunk(dy_map, oh, ow, sdyh, ok, 0.0, BLOCK_C, BLOCK_P)
                idx_row += _chunk(idx_map, oh, ow, sidxh, ok, TAPS * TAPS, BLOCK_C, BLOCK_P)
            for j in tl.static_range(NW):
                grads += (dy_row[5 - GATHER + j].to(tl.float32),)
                taps += (idx_row[5 - GATHER + j].to(tl.int32),)
    for w in tl.static_range(0 if ROW_RUNS else NW * NW):
        oh = oh0 + w // NW
        ow = ow0 + w % NW
        ok = lane_ok & ((oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW))[None, :]
        grads += (tl.load(dy_cell + ((w // NW) * sdyh + (w % NW) * sdyw), mask=ok, other=0.0).to(tl.float32),)
        if not WEIGHTED:
            # Outside `ok` the record reads as TAPS*TAPS, which names no tap.
            taps += (tl.load(idx_cell + ((w // NW) * sidxh + (w % NW) * sidxw), mask=ok,
                             other=TAPS * TAPS).to(tl.int32),)
    if WEIGHTED:
        PATCH: tl.constexpr = (NW - 1) * STRIDE + TAPS
        x_map = x_ptr + n * sxn + c64 * sxc
        ih0 = oh0 * STRIDE - pad_h
        iw0 = ow0 * STRIDE - pad_w
        rows_in = ()
        cols_in = ()
        for i in tl.static_range(PATCH):
            rows_in += ((ih0 + i >= 0) & (ih0 + i < H),)
            cols_in += ((iw0 + i >= 0) & (iw0 + i < W),)
        values = ()
        for q in tl.static_range(PATCH * PATCH):
            ok = lane_ok & (rows_in[q // PATCH] & cols_in[q % PATCH])[None, :]
            x_offs = ((ih0 + q // PATCH).to(tl.int64) * sxh + (iw0 + q % PATCH).to(tl.int64) * sxw)[None, :]
            # Units outside the input read as NaN, which outranks nothing (`_outranks`): they take no part in
            # the ranks, and are never ranked themselves (their pixels are not stored).
            values += (tl.load(x_map + x_offs, mask=ok, other=float("nan")).to(tl.float32),)

    # The lane's first pixel, from which pixel r sits (r // CELL, r % CELL) on.
    dx_cell = (dx_ptr + n * sdxn + c64 * sdxc
               + ((uh * CELL - pad_h).to(tl.int64) * sdxh + (uw * CELL - pad_w).to(tl.int64) * sdxw)[None, :])
    if WEIGHTED:
        # Pixel r of window w takes dy (1-p) p^rank = dy (1-p) 2^(rank log2 p): the factor dy (1-p) once per
        # window, the exponent summed over the units that outrank the pixel (`_cell_rank`).
        log2_p = tl.log2(p)
        scaled = ()
        for w in tl.static_range(NW * NW):
            scaled += (grads[w] * (1.0 - p),)
    for r in tl.static_range(CELL * CELL):
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for w in tl.static_range(NW * NW):
            # Pixel r's tap in window w, along each axis (compile-time constants).
            if _is_tap(r // CELL, w // NW, GATHER, STRIDE, TAPS) and _is_tap(r % CELL, w % NW, GATHER, STRIDE, TAPS):
                if WEIGHTED:
                    # The pixel sits at (r // CELL, r % CELL) + (GATHER-1) * STRIDE in the patch.
                    exponent = _cell_rank(values, (r // CELL + (GATHER - 1) * STRIDE) * PATCH + r % CELL
                                          + (GATHER - 1) * STRIDE, (w // NW) * STRIDE, (w % NW) * STRIDE, log2_p,
                                          PATCH, TAPS)
                    acc += scaled[w] * tl.exp2(exponent)
                else:
                    t = (r // CELL + (GATHER - 1 - w // NW) * STRIDE) * TAPS + r % CELL + (GATHER - 1 - w % NW) * STRIDE
                    # A select of the sum, not a sum of a select: ptxas makes it one predicated add.
                    acc = tl.where(taps[w] == t, acc + grads[w], acc)
        ih = uh * CELL + r // CELL - pad_h
        iw = uw * CELL + r % CELL - pad_w
        ok = lane_ok & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[None, :]
        tl.store(dx_cell + ((r // CELL) * sdxh + (r % CELL) * sdxw), acc.to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _chunk(map_ptr, oh, ow, stride_h, mask, other, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Columns [ow, ow + 4) of row oh of each lane's map (`_backward_cells`' ROW_RUNS; the launcher guarantees
    oh * stride_h + ow a multiple of 4 elements), as a tuple of 4 [BLOCK_C, BLOCK_P] tiles in column order:
    one vector load of [BLOCK_C, BLOCK_P, 4] (`mask` per lane), split in registers (`_columns`)."""
    start = tl.multiple_of(oh.to(tl.int64) * stride_h + ow, 4)
    return _columns(tl.load(map_ptr[:, :, None] + (start[None, :, None] + tl.arange(0, 4)[None, None, :]),
                            mask=mask[:, :, None], other=other), BLOCK_C, BLOCK_P)


@triton.jit
def _columns(run, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The 4 columns of a [BLOCK_C, BLOCK_P, 4] tile whose last axis one thread holds, as a tuple of [BLOCK_C,
    BLOCK_P] tiles in column order: splits in registers, no data moved between threads (each split halves
    the last axis by taking alternate columns, so the pairs come out as (0, 2) and (1, 3))."""
    even, odd = tl.split(tl.reshape(run, (BLOCK_C, BLOCK_P, 2, 2)))
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def _cell_rank(values, ME: tl.constexpr, H0: tl.constexpr, W0: tl.constexpr, step, PATCH: tl.constexpr,
               TAPS: tl.constexpr):
    """`_window_rank` of unit ME in the TAPS x TAPS window whose tap (0, 0) sits at (H0, W0) of a patch held
    as a tuple of PATCH x PATCH values (ME = row * PATCH + column; NaN outside the input, `_backward_cells`),
    times `step`, summed in float32 (`step` per unit that outranks ME: no multiply or conversion per rank).
    A window's tap order is its patch's row-major order, so each compare depends on the two units only, not
    on the window: the windows that share a pair of units share its compare."""
    rank = tl.zeros_like(values[ME])
    for t in tl.static_range(TAPS * TAPS):
        if (H0 + t // TAPS) * PATCH + W0 + t % TAPS != ME:
            rank = tl.where(_outranks(values, (H0 + t // TAPS) * PATCH + W0 + t % TAPS, ME), rank + step, rank)
    return rank


@triton.jit
def _outranks(values, U: tl.constexpr, ME: tl.constexpr):
    """Where patch unit U (`_cell_rank`) outranks unit ME: larger, or equal at an earlier tap (>= is false
    for NaN, as > and == are, so a NaN outranks nothing and nothing outranks it)."""
    if U < ME:
        above = values[U] >= values[ME]
    else:
        above = values[U] > values[ME]
    return above


@triton.constexpr_function
def _is_tap(r, w, gather, stride, taps):
    """Whether cell position r sits in cell window w at a tap of a `taps`-wide window (`_backward_cells`)."""
    return 0 <= r + (gather - 1 - w) * stride < taps


@triton.jit
def _backward_pixels(dy_ptr, idx_ptr, x_ptr, dx_ptr, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w,
                     dil_h, dil_w, p, sdyn, sdyc, sdyh, sdyw, sidxn, sidxc, sidxh, sidxw, sxn, sxc, sxh, sxw,
                     sdxn, sdxc, sdxh, sdxw, WEIGHTED: tl.constexpr, GATHER_H: tl.constexpr, GATHER_W: tl.constexpr,
                     DILATED: tl.constexpr, STRIDE: tl.constexpr, SAME_STRIDES: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """max_pool2d_backward_kernel for any window: each lane one input pixel, visiting its candidate
    windows."""
    n, offs_c, offs_p = sample_channel_pixel_tile(tl.program_id(0), C, H * W, BLOCK_C, BLOCK_P)
    ih = offs_p // W
    iw = offs_p % W
    valid = (offs_c < C)[:, None] & (offs_p < H * W)[None, :]
    c64 = offs_c.to(tl.int64)[:, None]
    dy_map = dy_ptr + n * sdyn + c64 * sdyc
    if WEIGHTED:
        x_map = x_ptr + n * sxn + c64 * sxc
        v = tl.load(x_map + (ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)[None, :], mask=valid, other=0.0)
        v = v.to(tl.float32)
    else:
        idx_map = idx_ptr + n * sidxn + c64 * sidxc
    if STRIDE:
        stride_h = STRIDE
        stride_w = STRIDE
    oh_last = (ih + pad_h) // stride_h
    rem_h = ih + pad_h - oh_last * stride_h
    ow_last = (iw + pad_w) // stride_w
    rem_w = iw + pad_w - ow_last * stride_w

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for q in tl.static_range(GATHER_H * GATHER_W):
        oh, kh, oh_ok = _containing_window(oh_last, rem_h, q // GATHER_W, stride_h, OH, KH, dil_h,
                                           DILATED)
        ow, kw, ow_ok = _containing_window(ow_last, rem_w, q % GATHER_W, stride_w, OW, KW, dil_w,
                                           DILATED)
        ok = valid & (oh_ok & ow_ok)[None, :]
        t = (kh * KW + kw)[None, :]
        dy_offs = (oh.to(tl.int64) * sdyh + ow.to(tl.int64) * sdyw)[None, :]
        g = tl.load(dy_map + dy_offs, mask=ok, other=0.0)
        if WEIGHTED:
            taps = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32) + t
            rank = _window_rank(x_map, (oh * stride_h - pad_h)[None, :], (ow * stride_w - pad_w)[None, :], ok,
                                v, taps, H, W, KH, KW, dil_h, dil_w, sxh, sxw)
            acc += tl.where(ok, g.to(tl.float32) * _keep_weight(rank, p), 0.0)
        else:
            # Outside `ok` the record reads as KH*KW, which names no tap: the compare alone masks it.
            if SAME_STRIDES:
                idx_offs = dy_offs
            else:
                idx_offs = (oh.to(tl.int64) * sidxh + ow.to(tl.int64) * sidxw)[None, :]
            sel = tl.load(idx_map + idx_offs, mask=ok, other=KH * KW)
            acc = tl.where(sel.to(tl.int32) == t, acc + g.to(tl.float32), acc)   # one predicated add (`_backward_cells`)

    dx_offs = n * sdxn + c64 * sdxc + (ih.to(tl.int64) * sdxh + iw.to(tl.int64) * sdxw)[None, :]
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=valid)
