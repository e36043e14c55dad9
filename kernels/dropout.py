"""Dropout kernels for conv nets: element, spatial (per feature map), cutout and DropBlock.

No kernel stores a mask. Every keep/drop decision is a pure function of a 64-bit seed and the logical
(n, c, h, w) position of the element, computed with Triton's Philox4x32-10 (`tl.randint4x`; `_philox`
gives its words in fewer instructions, and draws all but spatial dropout's one word per map). A forward
and its backward read the same seed (a one-element int64 tensor) and so regenerate the same mask; the
memory layout of the tensors never enters the key, so NCHW and channels_last give the same mask, and a
gradient can arrive in a different layout from the input.

Keys, with r = n*C + c the index of a feature map (a "row"):

    element dropout   counter e // 8, 16-bit half e % 8 of the call's four words, with e = r*HW + hw
                      (hw = h*W + w) the flat NCHW index: one Philox call serves eight consecutive
                      logical elements, since one call costs many integer instructions and a
                      memory-bound kernel cannot afford one per element. A contiguous NCHW tensor is
                      then one flat run of whole calls (vector loads whatever HW is); a channels_last
                      tile gathers each row's halves when HW is not a multiple of 8.
    spatial dropout   counter r, word 0: one draw per feature map (`tl.rand`).
    cutout            counter r, words 0 and 1: the square's centre row and column.
    DropBlock         seed grid (n, c, i, j), 0 <= i < H-bs+1, 0 <= j < W-bs+1: with R seed rows per
                      call (R = 8 for gamma >= 2^-10, else 4), counter (r * ceil(Hs/R) + i // R) * Ws + j,
                      16-bit half i % 8 in element dropout's order (R = 8) or word i % 4 (R = 4).
                      Within one forward call, pass 1 also packs the seeds it draws into a workspace
                      (one bit per seed) that pass 2 reads instead of drawing them again; the workspace
                      goes when the call returns, and the backward draws from the key.

Spatial dropout turns a word u (uint32) into a uniform float in [0, 1) by `tl.uint_to_uniform_float` and
keeps the map when that float is >= p, so p = 0 keeps everything and p = 1 drops everything. Element
dropout draws 16 bits per element instead: it keeps a half u when u >= round(p * 2^16), so its drop
probability is p rounded to a multiple of 2^-16 (still exactly 0 for p = 0 and 1 for p = 1). DropBlock
seeds a position when its draw u < round(gamma * 2^b): gamma rounded to a multiple of 2^-b. The seeds
of one call cost one Philox call per R positions, which dominates the backward (it draws them again), so
b = 16 bits (R = 8) wherever that rounding moves gamma by at most 1/128 of itself (gamma >= 2^-10: at
least 64 steps of 2^-16; torchvision's p = 0.1, bs = 7 gives gamma ~ 2.5e-3) and b = 32 (R = 4) below,
where 16 bits would round a rare seed's probability too coarsely.

Dropped elements are written as exact zeros, selected rather than multiplied, so a dropped inf or NaN
gives 0, where torch's multiply-by-mask gives NaN (a NaN that is kept stays NaN). Element dropout and
cutout read every element (a per-element load mask would split vector loads into scalar ones); spatial
dropout reads no dropped map, except where a tile of one flat run of maps (FLAT) also covers a kept one.

All offsets and Philox counters are int64, except DropBlock's apply pass: its offsets within a sample are
int32 unless the launcher sets INT64 (`needs_int64`); either way a tensor over 2^31 elements indexes
correctly.
"""

import triton
import triton.language as tl

from tritonconv.kernels.common import as_index, sample_channel_blocks

# Which mask `dropout_mask_kernel` applies.
ELEMENT = tl.constexpr(0)   # each element independently: F.dropout
CHANNEL = tl.constexpr(1)   # each (n, c) feature map as a whole: F.dropout2d
CUTOUT = tl.constexpr(2)    # one size x size square per (n, c) map, clipped at the border


@triton.jit
def _philox(seed, counter):
    """tl.randint4x(seed, counter), bit for bit: Philox4x32-10 of (counter's low and high words, 0, 0)
    under the 64-bit key `seed`, with each round's two products taken as 64-bit products of 32-bit
    words. tl.randint4x takes a product's high word (umulhi) and its low word (a second multiply)
    separately, so every product costs two multiplies; one wide multiply gives both, a third of the
    instructions of a call."""
    c0 = counter.to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    key = seed.to(tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    for _ in tl.static_range(10):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p2 = c2.to(tl.uint64) * 0xCD9E8D57
        c0, c1, c2, c3 = (p2 >> 32).to(tl.uint32) ^ c1 ^ k0, p2.to(tl.uint32), \
            (p0 >> 32).to(tl.uint32) ^ c3 ^ k1, p0.to(tl.uint32)
        k0 += 0x9E3779B9
        k1 += 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _halves_kept(r0, r1, r2, r3, threshold, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Interleave four [ROWS, COLS // 8] blocks of Philox words into one [ROWS, COLS] block of keep bits:
    the eight 16-bit halves of column q's call serve columns 8q..8q+7 in the order that the joins below
    lay them out (words r0, r2, r1, r3, each low half first), and a half u is kept when u >= threshold."""
    words = tl.join(tl.join(r0, r1), tl.join(r2, r3))
    halves = tl.reshape(tl.join(words & 0xFFFF, words >> 16), (ROWS, COLS))
    return halves.to(tl.int32) >= threshold


@triton.jit
def _word_bits(word, threshold):
    """Keep bits of one Philox word's two 16-bit halves: bit 0 the low half, bit 1 the high half."""
    return ((word & 0xFFFF).to(tl.int32) >= threshold).to(tl.int32) \
        | (((word >> 16).to(tl.int32) >= threshold).to(tl.int32) << 1)


@triton.jit
def _call_bits(r0, r1, r2, r3, threshold):
    """Keep bits of Philox calls (words r0..r3) as 8-bit masks, half j as bit j in `_halves_kept`'s order."""
    return _word_bits(r0, threshold) | (_word_bits(r2, threshold) << 2) \
        | (_word_bits(r1, threshold) << 4) | (_word_bits(r3, threshold) << 6)


@triton.jit
def _seed_bits(r0, r1, r2, r3, gamma_bits, SEED_ROWS: tl.constexpr):
    """DropBlock's seeds of one Philox call's SEED_ROWS seed rows, row k as bit k of a uint32: with 4 rows,
    row k is seeded when word k < gamma_bits; with 8, when 16-bit half k < gamma_bits, the halves in
    `_call_bits`'s order (words r0, r2, r1, r3, each low half first), whose keep bits (half >= threshold)
    are exactly the complement."""
    if SEED_ROWS == 4:
        # Integer comparisons: a float conversion per word costs several instructions.
        bits = (r0.to(tl.int64) < gamma_bits).to(tl.uint32) \
            | ((r1.to(tl.int64) < gamma_bits).to(tl.uint32) << 1) \
            | ((r2.to(tl.int64) < gamma_bits).to(tl.uint32) << 2) \
            | ((r3.to(tl.int64) < gamma_bits).to(tl.uint32) << 3)
    else:
        bits = (~_call_bits(r0, r1, r2, r3, gamma_bits) & 0xFF).to(tl.uint32)
    return bits


@triton.jit
def _element_kept(seed, first, threshold, ROWS: tl.constexpr, COLS: tl.constexpr, ALIGNED: tl.constexpr):
    """ELEMENT's keep bits of a [ROWS, COLS] tile whose row i holds the logical elements first[i] + t
    (int64 flat NCHW indices): element e takes half e % 8 of Philox call e // 8.

    ALIGNED: every first[i] is a multiple of 8, so the row's COLS // 8 calls serve it in order. Otherwise
    (COLS <= 64) row i starts at half s = first[i] % 8 of its first call, and its COLS // 8 calls serve
    only its first COLS - 8 elements (the caller masks the rest): the row's COLS keep bits are packed
    into one int64 (call q's byte at bit 8q) and shifted down by s, and each element reads its bit.
    Moving one integer per row costs far less than moving every element's bit along the row (a gather),
    and a ninth call per row would be computed in the load's layout, many times over."""
    calls = first // 8
    q = tl.arange(0, COLS // 8)
    r0, r1, r2, r3 = _philox(seed, calls[:, None] + q[None, :])
    if ALIGNED:
        kept = _halves_kept(r0, r1, r2, r3, threshold, ROWS, COLS)
    else:
        # Disjoint bit fields: their sum is their OR.
        row = tl.sum(_call_bits(r0, r1, r2, r3, threshold).to(tl.int64) << (8 * q.to(tl.int64))[None, :], axis=1)
        row >>= first % 8
        kept = ((row[:, None] >> tl.arange(0, COLS).to(tl.int64)[None, :]) & 1) != 0
    return kept


@triton.jit
def _cut_square(seed, r, H, W, cut_size):
    """CUTOUT's square of map r: its top row and left column. A centre (cy, cx) uniform over the map: the
    high word of u * H is floor(u * H / 2^32), uniform on [0, H) up to a bias of H / 2^32. The square
    spans rows [cy - size//2, cy - size//2 + size), centred for odd sizes."""
    u_h, u_w, _, _ = _philox(seed, r)
    top = tl.umulhi(u_h, tl.cast(H, tl.uint32)).to(tl.int32) - cut_size // 2
    left = tl.umulhi(u_w, tl.cast(W, tl.uint32)).to(tl.int32) - cut_size // 2
    return top, left


@triton.jit
def dropout_mask_kernel(
    x_ptr, y_ptr,   # input and output (or dy and dx: the backward applies the same mask)
    seed_ptr,       # one int64, the Philox seed
    # Sizes: x and y are viewed as (N, C, HW) maps, HW = H*W flattened (its memory stride is that of w,
    # which needs a dense H x W plane: the launcher copies any other input). H and W are used by CUTOUT.
    C, HW, H, W,
    p,              # drop probability (CHANNEL)
    threshold,      # ELEMENT: round(p * 2^16); a 16-bit draw u keeps its element when u >= threshold
    scale,          # factor for kept elements: 1/(1-p) for ELEMENT and CHANNEL (0 when p = 1), 1 for CUTOUT
    cut_size,       # side of the cutout square (CUTOUT)
    w_magic, w_shift,   # CUTOUT: W's multiplier and shift, so that pos // W needs no division
    # Element strides of x and y over (n, c, hw).
    sxn, sxc, sxhw,
    syn, syc, syhw,
    MODE: tl.constexpr,       # ELEMENT, CHANNEL or CUTOUT
    BLOCK_C: tl.constexpr,    # feature maps (channels of one sample) per program
    BLOCK_P: tl.constexpr,    # positions of each map per program: a multiple of 8
    ALIGNED: tl.constexpr,    # ELEMENT: HW % 8 == 0 or one map (N*C == 1), so rows start on a Philox call;
                              # otherwise BLOCK_P <= 64 and a program covers BLOCK_P - 8 positions
    FLAT: tl.constexpr,       # CHANNEL, CUTOUT: x and y are one dense run (N = C = 1, HW = their size) of
                              # maps of H x W positions, with BLOCK_P <= H*W
):
    """y = x * keep(n, c, hw) * scale, with keep from the Philox key of MODE (module docstring).

    The backward of every mode is this kernel applied to dy with the same seed. Grid:
    (N * cdiv(C, BLOCK_C) * cdiv(HW, STEP),), STEP = BLOCK_P (BLOCK_P - 8 for an unaligned ELEMENT),
    position blocks fastest so that consecutive programs cover consecutive memory of an NCHW map.
    """
    # Positions per program: all of the tile's, or (unaligned ELEMENT) those its rows' calls cover.
    STEP: tl.constexpr = BLOCK_P if ALIGNED else BLOCK_P - 8
    n, pid_c, pid_hw = sample_channel_blocks(tl.program_id(0), tl.cdiv(C, BLOCK_C), tl.cdiv(HW, STEP))

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    # int64: a tensor of another rank is one flattened map, which may hold more than 2^31 elements.
    hw_start = pid_hw.to(tl.int64) * STEP
    offs_hw = hw_start + tl.arange(0, BLOCK_P)
    in_bounds = (offs_c < C)[:, None] & ((offs_hw < HW) & (tl.arange(0, BLOCK_P) < STEP))[None, :]
    rows = n * C + offs_c.to(tl.int64)   # r = n*C + c, the map's index in the Philox keys
    seed = tl.load(seed_ptr)

    if FLAT:
        # One run of maps of H*W positions, BLOCK_P <= H*W: the tile lies in the map of its first element
        # (map r = first, as n*C + c is the flat index // H*W) and, past that map's end, in the next one;
        # each element's map and position in it follow from the tile's start without a division per element.
        map_size = H * W
        first = hw_start // map_size
        start = (hw_start - first * map_size).to(tl.int32)
        t = tl.arange(0, BLOCK_P)
        second = t >= map_size - start

    if MODE == ELEMENT:
        keep = _element_kept(seed, rows * HW + hw_start, threshold, BLOCK_C, BLOCK_P, ALIGNED)
    elif MODE == CHANNEL:
        if FLAT:
            kept_first = tl.rand(seed, first) >= p
            kept_second = tl.rand(seed, first + 1) >= p
            keep = tl.where(second, kept_second, kept_first)[None, :]
        else:
            keep = (tl.rand(seed, rows) >= p)[:, None]
    else:
        if FLAT:
            pos = (start + t - tl.where(second, map_size, 0))[None, :]
            top0, left0 = _cut_square(seed, first, H, W, cut_size)
            top1, left1 = _cut_square(seed, first + 1, H, W, cut_size)
            top = tl.where(second, top1, top0)[None, :]
            left = tl.where(second, left1, left0)[None, :]
        else:
            pos = offs_hw.to(tl.int32)[None, :]   # a 4-D tensor's map holds fewer than 2^31 positions
            top, left = _cut_square(seed, rows, H, W, cut_size)
            top = top[:, None]
            left = left[:, None]
        # h = pos // W by W's multiplier (Granlund-Montgomery, exact for pos < 2^31): floor(2 pos m / 2^32)
        # >> shift, m = ceil(2^(31 + shift) / W), shift = ceil(log2 W): a multiply and a shift, where a
        # runtime division is a long integer sequence per element.
        h = (tl.umulhi(pos.to(tl.uint32) << 1, tl.cast(w_magic, tl.uint32)) >> w_shift).to(tl.int32)
        w = pos - h * W
        # 0 <= h - top < size as one unsigned comparison (clipping at the border happens by itself,
        # since only real positions are compared).
        inside = ((h - top).to(tl.uint32) < cut_size) & ((w - left).to(tl.uint32) < cut_size)
        keep = ~inside

    # The load is masked by bounds only, so that it stays a vector load: a per-element mask makes every
    # element its own scalar load. CHANNEL's keep is constant along a map's positions, so it can mask the
    # load (a dropped map is never read) without splitting the vectors; a flat tile, whose keep changes at
    # its maps' boundary (anywhere in a vector), is read unless both its maps are dropped. The keep decision
    # is then applied with a select, so dropped elements come out as exact zeros whatever they hold (inf and
    # NaN too).
    if MODE == CHANNEL:
        if FLAT:
            load_mask = tl.where(kept_first | kept_second, in_bounds, False)
        else:
            load_mask = in_bounds & keep
    else:
        load_mask = in_bounds
    x_offs = (n * sxn + offs_c.to(tl.int64) * sxc)[:, None] + offs_hw[None, :] * sxhw
    x = tl.load(x_ptr + x_offs, mask=load_mask, other=0.0).to(tl.float32)
    y_offs = (n * syn + offs_c.to(tl.int64) * syc)[:, None] + offs_hw[None, :] * syhw
    tl.store(y_ptr + y_offs, tl.where(keep, x * scale, 0.0).to(y_ptr.dtype.element_ty), mask=in_bounds)


@triton.jit
def _spread_lanes(bits, lane, width):
    """For each lane t, the OR of `bits` over lanes [t - width + 1, t] along axis 1 (none before lane 0),
    in ceil(log2(width)) doubling steps: after a step covering c lanes, OR-ing in the result s <= c lanes
    to the left covers c + s. `lane` is each element's index along axis 1."""
    covered = 1
    while covered < width:
        step = tl.minimum(covered, width - covered)
        shifted = tl.gather(bits, tl.maximum(lane - step, 0), 1)
        bits |= tl.where(lane >= step, shifted, 0)
        covered += step
    return bits


@triton.jit
def _spread_bits(bits, width):
    """For each bit k of the uint32s `bits`, the OR of bits [k - width + 1, k] (width <= 32), in the same
    doubling steps as `_spread_lanes`, each a shift within the register."""
    covered = 1
    while covered < width:
        step = tl.minimum(covered, width - covered)
        bits |= bits << step
        covered += step
    return bits


@triton.jit
def _popcount(v):
    """Set bits of each uint32 (the bit-parallel sum: pairs, nibbles, bytes, then the bytes' sum in the
    top byte of one multiply)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _top_bit(v):
    """Index of the highest set bit of each nonzero uint32: smear it into every bit below, then count."""
    v |= v >> 1
    v |= v >> 2
    v |= v >> 4
    v |= v >> 8
    v |= v >> 16
    return _popcount(v) - 1


@triton.jit
def _low_bits(count):
    """uint32s with their `count` lowest bits set (count clamped to [0, 32])."""
    return ((tl.full(count.shape, 1, tl.int64) << tl.minimum(tl.maximum(count, 0), 32).to(tl.int64)) - 1) \
        .to(tl.uint32)


@triton.jit
def _row(ptrs, i, stride_h, INT64: tl.constexpr):
    """Pointers to row i of a tile whose row-0 pointers are `ptrs`: one 64-bit add per element, which rows
    i + 1, i + 2, ... share, as constant offsets k * stride_h from these (stride_h a constexpr: immediates
    of the loads and stores)."""
    return ptrs + as_index(i, INT64) * stride_h


@triton.jit
def _store_kept(ptrs, x, dropped, k, scale, mask):
    """Store row k of a chunk: x * scale where bit k of `dropped` is clear, else an exact zero (a select,
    so a dropped element gives 0 whatever it holds)."""
    keep = ((dropped >> k) & 1) == 0
    tl.store(ptrs, tl.where(keep, x.to(tl.float32) * scale, 0.0).to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def drop_block_kernel(
    x_ptr, y_ptr,   # input and output (APPLY only)
    seed_ptr,       # one int64, the Philox seed
    count_ptr,      # one int64: the kept elements, added to by COUNT, read by APPLY
    seeds_ptr,      # int32 words of packed seeds, one per (map r, seed rows [32G, 32G + 32), seed column j) at
                    # (r * ceil(Hs / 32) + G) * Ws + j, bit b for row 32G + b (rows Hs and below clear):
                    # written by COUNT, read by APPLY with SEEDS
    # Sizes: x and y (N, C, H, W); block side bs; seed grid Hs x Ws = (H - bs + 1) x (W - bs + 1).
    C, H, W, bs, Hs, Ws,
    gamma_bits,     # a seed-grid position starts a block when its draw u < gamma_bits = round(gamma * 2^b),
                    # b = 32 bits (SEED_ROWS 4: an int64 up to 2^32) or 16 (SEED_ROWS 8: up to 2^16); gamma_bits
                    # = 2^b seeds every position
    numel,          # N*C*H*W as a float, the numerator of the scale (APPLY only)
    eps,            # added to the kept count in the scale's denominator, as torchvision does
    # Element strides of x and y in (N, C, H, W) order.
    sxn, sxc, sxh: tl.constexpr, sxw,
    syn, syc, syh: tl.constexpr, syw,
    COUNT: tl.constexpr,     # True: add the number of kept elements to *count_ptr (int64) and write the
                             # packed seeds of the program's own rows to seeds_ptr; no x or y.
                             # False: y = x * keep * numel / (eps + *count_ptr).
    SEEDS: tl.constexpr,     # APPLY only: read the seeds that COUNT wrote instead of drawing them again
    SEED_ROWS: tl.constexpr,   # seed rows per Philox call: 4 (a 32-bit word each) or 8 (a 16-bit half each)
    INT64: tl.constexpr,     # APPLY: 64-bit offsets within a sample (`needs_int64`), else int32
    BLOCK_C: tl.constexpr,   # channels of one sample per program
    BLOCK_W: tl.constexpr,   # lanes per row: bs - 1 halo columns, then BLOCK_W - bs + 1 output columns
    BLOCK_H: tl.constexpr,   # output rows per program
):
    """DropBlock's mask, 32 rows at a time as the bits of one uint32 per lane, without a stored mask; one
    kernel for both passes.

    A seed at grid position (i, j) drops the bs x bs square of rows [i, i+bs) and columns [j, j+bs), so
    element (h, w) is dropped when some seed lies in rows [h-bs+1, h] and columns [w-bs+1, w]: a max over
    columns, then over rows. Each program owns BLOCK_C maps x BLOCK_H rows x (BLOCK_W - bs + 1) columns
    and walks the seed rows from the multiple of 32 at or above h0 - bs + 1 down to its last row, 32 at a
    time ("chunks"): it draws the seeds of its lanes for the 32 rows as the bits of one uint32 per lane
    (those it needs: rows from h0 - bs + 1), spreads each bit over the lane and the bs - 1 lanes to its
    right (`_spread_lanes`: a few gathers along the lanes per chunk), then over its own row and the bs - 1
    rows after it (`_spread_bits`: shifts of the register towards its high bits), and sets the lowest bits
    for the rows that seeds of earlier chunks still reach (`reach`). Bit k of the result is set when
    output row row0 + k of the lane is dropped (row0 the chunk's first row). So each seed is drawn once per program, the halo costs
    bs - 1 extra rows and columns of draws, never bs^2 draws per element, and the mask of a row is one bit
    test.

    Pass 1 (COUNT) counts the kept elements of the program's own outputs (the halos overlap, the outputs
    do not) from the bits, 32 rows in one population count, and adds them to one int64 with an atomic; it
    also writes each chunk's seed bits that start in its own rows and columns to seeds_ptr, one word per
    lane. Pass 2 (APPLY) takes the same seeds, read from those words (SEEDS: a load per chunk, where
    drawing them is most of the pass's instructions) or drawn again, and writes y = x * keep * numel /
    (eps + count) (dropped elements as exact zeros). The backward is pass 2 on dy with the same count,
    drawing. Grid: (N * cdiv(C, BLOCK_C) * cdiv(H, BLOCK_H) * cdiv(W, BLOCK_W - bs + 1),).
    """
    out_cols = BLOCK_W - bs + 1
    num_w = tl.cdiv(W, out_cols)
    n, pid_c, tile = sample_channel_blocks(tl.program_id(0), tl.cdiv(C, BLOCK_C), tl.cdiv(H, BLOCK_H) * num_w)
    pid_h = tile // num_w
    pid_w = tile % num_w

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = n * C + offs_c.to(tl.int64)
    # Lane t is column w = w0 - (bs - 1) + t: the first bs - 1 lanes are the halo of seeds that reach into
    # the program's first output column; lane t is an output when t >= bs - 1. Seeds live at columns
    # j = w in [0, Ws).
    lane = tl.arange(0, BLOCK_W)
    w = pid_w * out_cols - (bs - 1) + lane
    seed_col = (w >= 0) & (w < Ws)
    out_lane = (offs_c < C)[:, None] & ((lane >= bs - 1) & (w < W))[None, :]
    lane2d = lane[None, :] + tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.int32)
    seed = tl.load(seed_ptr)

    if COUNT:
        kept = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.int32)
    else:
        kept_total = tl.load(count_ptr).to(tl.float32)
        scale = numel / (eps + kept_total)
        # Each element's pointer in row 0 of the sample's maps; a row's offset is added per row (`_row`).
        x_tile = x_ptr + n * sxn + (as_index(offs_c, INT64)[:, None] * sxc + as_index(w, INT64)[None, :] * sxw)
        y_tile = y_ptr + n * syn + (as_index(offs_c, INT64)[:, None] * syc + as_index(w, INT64)[None, :] * syw)

    h0 = pid_h * BLOCK_H
    h_end = tl.minimum(h0 + BLOCK_H, H)
    # Seeds of earlier chunks drop the first `reach` rows of this one (none at first: above the program's
    # first halo row no seed reaches its outputs).
    reach = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.int32)
    # Seed rows come SEED_ROWS per Philox call and 32 per chunk, one bit each in a lane's register. Chunks
    # start on multiples of 32 rows, so that a chunk's bits are one word of seeds_ptr. The program needs the
    # seeds of rows [h0 - bs + 1, h_end): Philox calls from g_first to g_seeds.
    CALLS: tl.constexpr = 32 // SEED_ROWS   # Philox calls per chunk
    g_first = tl.maximum(h0 - bs + 1, 0) // SEED_ROWS
    g_seeds = tl.cdiv(tl.minimum(h_end, Hs), SEED_ROWS)
    # Counter of seed rows [SEED_ROWS*g, SEED_ROWS*(g + 1)) at (map r, column j): (r * ceil(Hs / SEED_ROWS)
    # + g) * Ws + j, a lane's first call plus g * Ws.
    call0 = rows[:, None] * tl.cdiv(Hs, SEED_ROWS) * Ws + w.to(tl.int64)[None, :]
    # Word of seed rows [32G, 32G + 32) at (map r, column j): a lane's first word plus G * Ws.
    word0 = rows[:, None] * tl.cdiv(Hs, 32) * Ws + w.to(tl.int64)[None, :]
    seed_lane = (offs_c < C)[:, None] & seed_col[None, :]
    for row0 in range(tl.maximum(h0 - bs + 1, 0) // 32 * 32, h_end, 32):
        # row0 < Hs: the chunk holds seeds.
        words = seed_lane & (lane2d * 0 + row0 < Hs)
        if SEEDS:
            bits = tl.load(seeds_ptr + word0 + (row0 // 32) * Ws, mask=words, other=0).to(tl.uint32, bitcast=True)
        else:
            # Only the rows the program needs, except that COUNT writes the words that start in its own
            # rows whole: drawn to the word's last seed row, the program's rows or not.
            g_stop = g_seeds
            if COUNT:
                g_stop = tl.where(row0 >= h0, tl.cdiv(Hs, SEED_ROWS), g_seeds)
            g0 = row0 // SEED_ROWS
            bits = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.uint32)
            for g in range(tl.maximum(g0, g_first), tl.minimum(g0 + CALLS, g_stop)):
                # g * Ws < Hs * Ws, within a map's positions: int32.
                r0, r1, r2, r3 = _philox(seed, call0 + g * Ws)
                drawn = _seed_bits(r0, r1, r2, r3, gamma_bits, SEED_ROWS)
                # Rows Hs and below of the last call hold no seeds.
                drawn &= ((1 << tl.minimum(Hs - SEED_ROWS * g, SEED_ROWS)) - 1).to(tl.uint32)
                bits |= drawn << (SEED_ROWS * (g - g0))
            bits = tl.where(seed_lane, bits, 0)
            if COUNT:
                # Each seed column is an output column of one program (out_lane), each word starts in
                # one program's rows: every word is written once.
                tl.store(seeds_ptr + word0 + (row0 // 32) * Ws, bits.to(tl.int32, bitcast=True),
                         mask=words & out_lane & (lane2d * 0 + row0 >= h0))
        # Bit k: a seed in row row0 + k and in one of the lane's bs columns [t-bs+1, t].
        bits = _spread_lanes(bits, lane2d, bs)
        # Bit k of `dropped`: output row row0 + k is dropped (a seed in rows [row0+k-bs+1, row0+k]).
        dropped = _spread_bits(bits, tl.minimum(bs, 32)) | _low_bits(reach)
        # The next chunk starts 32 rows down: this chunk's last seed row, row0 + t for its highest bit t,
        # reaches t + bs - 32 rows into it, an earlier chunk's reach - 32.
        reach = tl.maximum(reach - 32, tl.where(bits != 0, _top_bit(bits) + bs - 32, 0))
        # The program's own output rows in this chunk: k in [first, last).
        first = tl.maximum(h0 - row0, 0)
        last = tl.minimum(32, h_end - row0)
        if COUNT:
            own = (_low_bits(lane2d * 0 + last) & ~_low_bits(lane2d * 0 + first)) & ~dropped
            kept += tl.where(out_lane, _popcount(own), 0)
        else:
            # Four rows per iteration: all four rows' loads go out before any row is written, so one memory
            # round trip serves four rows (those past the block's last row are masked off).
            for k in range(first, last, 4):
                i = row0 + k
                # The row index in every lane: masks built from it stay [BLOCK_C, BLOCK_W] booleans (the
                # interpreter turns a boolean scalar broadcast into int32, which tl.load rejects as a mask).
                out1 = out_lane & (lane2d * 0 + k + 1 < last)
                out2 = out_lane & (lane2d * 0 + k + 2 < last)
                out3 = out_lane & (lane2d * 0 + k + 3 < last)
                # Masked by bounds only, so that the loads stay vector loads.
                x_row = _row(x_tile, i, sxh, INT64)
                x0 = tl.load(x_row, mask=out_lane, other=0.0)
                x1 = tl.load(x_row + sxh, mask=out1, other=0.0)
                x2 = tl.load(x_row + 2 * sxh, mask=out2, other=0.0)
                x3 = tl.load(x_row + 3 * sxh, mask=out3, other=0.0)
                y_row = _row(y_tile, i, syh, INT64)
                _store_kept(y_row, x0, dropped, k, scale, out_lane)
                _store_kept(y_row + syh, x1, dropped, k + 1, scale, out1)
                _store_kept(y_row + 2 * syh, x2, dropped, k + 2, scale, out2)
                _store_kept(y_row + 3 * syh, x3, dropped, k + 3, scale, out3)
    if COUNT:
        # Relaxed: the sum is read only after the kernel ends (acq_rel would fence every atomic).
        tl.atomic_add(count_ptr, tl.sum(tl.sum(kept, axis=1), axis=0).to(tl.int64), sem="relaxed")
