"""Dropouts for conv nets: configurations and launchers for the Philox-mask kernels, torch.library ops with
autograd, public ops.

Every op draws its mask from Philox keyed on (seed, element index) (see `tritonconv.kernels.dropout`):
`seed=None` takes a fresh seed from torch's default generator of the input's device, so
`torch.manual_seed` reproduces a run; an int `seed` gives the same mask on every call. Autograd saves
that one-element seed tensor (and DropBlock its kept count), never a mask: the backward regenerates the
mask in the same kernel applied to the incoming gradient.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Mapping

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (channels_last, check_probability, check_seed, check_tensor, empty_like_layout,
                                needs_int64, philox_seed)
from tritonconv._shared import input_grads
from tritonconv.heuristics import cdiv, next_power_of_2
from tritonconv.kernels.dropout import CHANNEL, CUTOUT, ELEMENT, drop_block_kernel, dropout_mask_kernel

# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch). A mask Problem has m = C (maps per sample), n = HW (positions
# per map), batch = N; a DropBlock Problem has m = C, n = W, k = H, batch = N and extra = block size.
# ---------------------------------------------------------------------------------------------------------

_FLAT_MAP = 1024   # spatial dropout and cutout run NCHW maps of at least this many positions as one flat run


def _mask_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """About 2048 elements per program (16384 in the interpreter, which pays per program), 32 KiB of x for
    element dropout's unaligned rows, twice the elements for flat runs of maps. NCHW widens the positions
    of a map (contiguous), channels_last the channels (contiguous: 64 channels make 128-byte runs in
    16-bit), then fills the rest of the tile with the other axis. (A contiguous tensor's element dropout
    is one flat map.)"""
    budget = 16384 if interpreter else 2048
    flat_map = dict(problem.extra).get("map")
    if flat_map:
        # Spatial dropout or cutout over a flat run of maps: a tile within two maps, whose draws (each of a
        # cutout's two squares, in every thread) the tile shares, so twice the budget to share them more.
        return dispatch.Config.of(num_warps=4, num_stages=1, BLOCK_C=1,
                                  BLOCK_P=min(1 << (flat_map.bit_length() - 1), 2 * budget))
    if not _rows_aligned(problem):
        # Element dropout packs each row's keep bits into one int64 (kernels/dropout.py): 64 lanes, 56
        # positions, per row, and 32 KiB of x per program (16384 16-bit lanes), since packing the rows
        # and moving them into the loads' layout costs the same per program whatever the tile's size.
        block_p = heuristics.pow2_clamp(problem.n + 8, 16, 64)
        block_c = heuristics.pow2_clamp(problem.m, 1, max(1, 16 * budget // (block_p * problem.dtype.itemsize)))
    elif problem.channels_last and not interpreter:
        block_c = heuristics.pow2_clamp(problem.m, 1, 64)
        block_p = heuristics.pow2_clamp(problem.n, 8, budget // block_c)
    else:
        block_p = heuristics.pow2_clamp(problem.n, 8, budget)
        # Masked lanes past a map's end still issue every instruction: halve the block while that padding
        # exceeds an eighth of the map (65x65 = 4225 positions fill 3 blocks of 2048 only to 69%, 9 of 512
        # to 92%), then fill the tile with maps.
        while block_p > 8 and cdiv(problem.n, block_p) * block_p * 8 > problem.n * 9:
            block_p //= 2
        block_c = heuristics.pow2_clamp(problem.m, 1, max(1, budget // block_p))
    return dispatch.Config.of(num_warps=4, num_stages=1, BLOCK_C=block_c, BLOCK_P=block_p)


def _rows_aligned(problem: dispatch.Problem) -> bool:
    """Whether every map of an element dropout starts on a Philox call (kernels/dropout.py, ALIGNED): its
    positions are a multiple of 8, or it is the only map. The other modes key on whole maps."""
    return dict(problem.extra)["mode"] != ELEMENT.value or problem.n % 8 == 0 or problem.m * problem.batch == 1


def _mask_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Tiles of 512 to 8192 elements, no axis over twice its extent (masked lanes only); 16 to 64
    positions and up to 16384 elements where element dropout packs rows into integers."""
    if _rows_aligned(problem):
        widest = dict(problem.extra).get("map", max(8, 2 * problem.n))  # a flat tile of maps: within two maps
        widths, largest = [v for v in (8, 16, 64, 256, 1024, 2048, 4096) if v <= widest], 8192
    else:
        widths, largest = [v for v in (16, 32, 64) if v <= max(16, 2 * (problem.n + 8))], 16384
    fits = {"BLOCK_C": [v for v in (1, 4, 16, 32, 64, 128, 256) if v <= max(1, 2 * problem.m)], "BLOCK_P": widths}
    return [cfg for cfg in dispatch.product_space(num_warps=(2, 4, 8), num_stages=(1,), **fits)
            if 512 <= cfg["BLOCK_C"] * cfg["BLOCK_P"] <= largest]


def _drop_block_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """One row of lanes: the width (at most 128 lanes, 64 in channels_last, whose contiguous channels want 16
    or more per tile) whose column blocks, each with its bs - 1 halo columns, cover the map's width in the
    fewest lanes. Channels fill the tile to 8 lanes per thread: 1024 lanes on 4 warps in channels_last, 512
    on 2 warps in NCHW, whose rows start inside a vector (the halo lanes) so that every element is its own
    load (with a 64-bit address per element and group of four rows), which on 4 warps left room for only 2
    programs per SM; pass 2 in float32 channels_last takes 4 lanes per thread (512 on 4 warps), since four
    rows of 8 float32 lanes per thread spill (triton 3.9 on sm_80, 3.6 on sm_90); 8192 lanes in the
    interpreter, which pays per program. 4 or 16 lanes per thread in NCHW were predicted slower (the latter
    spills).
    A row's addresses, loop and layout conversion cost the same per thread however many lanes it holds, and
    each lane carries only Philox words and two 32-row bit masks (`python -m bench.static --kernel
    drop_block_count drop_block_apply --space full` shows the registers). Rows: the whole map up to 96 rows
    (three 32-row chunks, which start on multiples of 32: no halo rows drawn or read twice), else 64 per
    program (the halo costs one chunk more per program), the whole map in the interpreter."""
    block = dict(problem.extra)["block"]
    widest = max(64 if problem.channels_last and not interpreter else 128, next_power_of_2(2 * block))
    # The fewest lanes per map row, halos and the last block's unused columns included (65 columns and
    # bs = 7: 3 blocks of 32 lanes, where 2 of 64 hold 128), the wider on a tie.
    block_w = min((v for v in (4, 8, 16, 32, 64, 128, 256) if block < v <= widest),
                  key=lambda v: (cdiv(problem.n, v - block + 1) * v, -v))
    per_thread = 4 if (problem.kernel == "drop_block_apply" and problem.channels_last
                       and problem.dtype.itemsize == 4) else 8
    lanes = 8192 if interpreter else (128 if problem.channels_last else 64) * per_thread
    block_c = heuristics.pow2_clamp(problem.m, 1, max(1, lanes // block_w))
    block_h = problem.k if interpreter or problem.k <= 96 else 64
    warps = heuristics.pow2_clamp(block_c * block_w // (32 * per_thread), 1, 4)
    return dispatch.Config.of(num_warps=warps, num_stages=1, BLOCK_C=block_c, BLOCK_W=block_w, BLOCK_H=block_h)


def _drop_block_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Rows of lanes wider than the block and at most twice the map's width plus halo, tiles of 512 to
    2048 lanes, row blocks no taller than the map (or 8)."""
    block = dict(problem.extra)["block"]
    widths = [v for v in (16, 32, 64, 128, 256) if v > block and v <= max(16, 2 * (problem.n + block))]
    return [cfg for cfg in dispatch.product_space(num_warps=(4, 8), num_stages=(1, 2), BLOCK_W=widths,
                                                  BLOCK_C=(1, 4, 8, 16, 32, 64), BLOCK_H=(8, 16, 32, 64))
            if 512 <= cfg["BLOCK_C"] * cfg["BLOCK_W"] <= 2048 and cfg["BLOCK_H"] <= max(8, problem.k)]


def _drop_block_programs(config: dispatch.Config, problem: dispatch.Problem) -> int:
    """One program per (sample, BLOCK_C maps, BLOCK_H rows, BLOCK_W - (bs - 1) columns) tile: each row of
    lanes also covers the bs - 1 halo columns of the seeds whose blocks reach into the tile."""
    block = dict(problem.extra)["block"]
    return (problem.batch * cdiv(problem.m, config["BLOCK_C"]) * cdiv(problem.k, config["BLOCK_H"])
            * cdiv(problem.n, config["BLOCK_W"] - block + 1))


def _drop_block_trips(problem: dispatch.Problem, config: dispatch.Config,
                      args: Mapping[str, object]) -> tuple[float, ...]:
    """Averaged over a program's row blocks: its chunks of 32 seed rows (from the multiple of 32 at or
    above its first halo row), then per chunk the Philox calls that draw seeds (none where pass 2 reads
    pass 1's words; pass 1 draws the whole words that start in its rows), the doubling steps that spread
    them along the lanes (ceil(log2(bs))) and along the rows (ceil(log2(min(bs, 32)))), and (pass 2; pass
    1 counts 32 rows at once) the groups of four of the program's own rows walked."""
    h, bs, block_h, rows = args["H"], args["bs"], config["BLOCK_H"], args["SEED_ROWS"]
    count = problem.kernel == "drop_block_count"
    hs = h - bs + 1
    chunks, calls, quads = [], 0, 0
    for h0 in range(0, h, block_h):
        h_end = min(h0 + block_h, h)
        first = max(h0 - bs + 1, 0) // rows
        starts = range(max(h0 - bs + 1, 0) // 32 * 32, h_end, 32)
        chunks.append(len(starts))
        for row0 in starts:
            stop = cdiv(hs, rows) if count and row0 >= h0 else cdiv(min(h_end, hs), rows)
            calls += max(0, min(row0 // rows + 32 // rows, stop) - max(row0 // rows, first))
            quads += cdiv(max(0, min(32, h_end - row0) - max(h0 - row0, 0)), 4)
    n = sum(chunks)
    spread = (math.ceil(math.log2(bs)), math.ceil(math.log2(min(bs, 32))))
    if count:
        return (n / len(chunks), calls / n, *spread)
    if dict(problem.extra).get("seeds"):
        return (n / len(chunks), *spread, quads / n)
    return (n / len(chunks), calls / n, *spread, quads / n)


def _mask_programs(config: dispatch.Config, problem: dispatch.Problem) -> int:
    """One program per (sample, BLOCK_C maps, positions) tile: BLOCK_P positions, or BLOCK_P - 8 where
    element dropout's rows start inside a Philox call."""
    step = config["BLOCK_P"] if _rows_aligned(problem) else config["BLOCK_P"] - 8
    return problem.batch * cdiv(problem.m, config["BLOCK_C"]) * cdiv(problem.n, step)


dispatch.register("dropout_mask", "dropout", dropout_mask_kernel, _mask_config, _mask_space,
                  programs=_mask_programs, trips=lambda problem, config, args: ())  # no loop
dispatch.register("drop_block_count", "dropout", drop_block_kernel, _drop_block_config, _drop_block_space,
                  programs=_drop_block_programs, trips=_drop_block_trips)
dispatch.register("drop_block_apply", "dropout", drop_block_kernel, _drop_block_config, _drop_block_space,
                  programs=_drop_block_programs, trips=_drop_block_trips)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

def _as_maps(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """`t` viewed as (N, C, HW) maps for dropout_mask_kernel: the tensor, its sizes and element strides.

    A 4-D tensor whose H x W plane is dense (NCHW, channels_last, a broadcast gradient, a slice along N or
    C) is used in place, its plane walked with the stride of w; any other 4-D tensor is copied first. A
    tensor of another rank is one map of all its elements.
    """
    if t.dim() == 4:
        n, c, h, w = t.shape
        if h > 1 and t.stride(2) != w * t.stride(3):
            t = t.contiguous()
        return t, (n, c, h * w), (t.stride(0), t.stride(1), t.stride(3))
    t = t.contiguous()
    return t, (1, 1, t.numel()), (0, 0, 1)


def _empty_output(x: torch.Tensor, out_channels_last: bool, device: torch.device | str) -> torch.Tensor:
    """An uninitialised tensor shaped like x on `device`: channels_last when asked (4-D only), else
    contiguous."""
    if x.dim() == 4:
        return empty_like_layout(x.shape, out_channels_last, x.dtype, device)
    return torch.empty(x.shape, dtype=x.dtype, device=device)


@dispatch.on_inputs_device
def apply_mask(x: torch.Tensor, seed: torch.Tensor, mode: int, p: float, size: int,
               out_channels_last: bool) -> Callable:
    """The launch of y = x * keep * scale for the mask `mode` (ELEMENT, CHANNEL or CUTOUT), in one pass over
    x, on tensors like these: run(x, seed) -> y.

    scale is 1/(1-p) for ELEMENT and CHANNEL (0 for p = 1, where nothing is kept) and 1 for CUTOUT. The
    output is channels_last when `out_channels_last` (a 4-D x only).
    """
    y = _empty_output(x, out_channels_last, "meta")
    # x and y both in NCHW order are one flat run, tiled by vector loads whatever the maps' size: element
    # dropout keys on the flat index alone, and spatial dropout and cutout find each element's map from
    # the tile's start (a tile of 4-D maps of at least _FLAT_MAP positions spans at most two).
    h, w = x.shape[2:] if x.dim() == 4 else (1, x.numel())
    flat = x.is_contiguous() and y.is_contiguous() and (
        mode == ELEMENT.value or (x.dim() == 4 and h * w >= _FLAT_MAP))
    like = _plans.meta_like(x).reshape(-1) if flat else _plans.meta_like(x)
    src, (n, c, hw), x_strides = _as_maps(like)
    copy = src.stride() != like.stride()  # _as_maps copies x whose plane is not dense
    alloc = _plans.allocator(y, x.device)
    if y.numel() == 0:
        return lambda x, seed: alloc()
    _, _, y_strides = _as_maps(y.reshape(-1) if flat else y)
    scale = 1.0 if mode == CUTOUT.value else (1.0 / (1.0 - p) if p < 1.0 else 0.0)
    threshold = round(p * 2**16)   # ELEMENT's 16-bit drop threshold (kernels/dropout.py)
    # W's multiplier for pos // W (kernels/dropout.py, CUTOUT): exact for every pos < 2^31.
    w_shift = (w - 1).bit_length()
    w_magic = -(-2**(31 + w_shift) // w)
    args = (c, hw, h, w, p, threshold, scale, size, w_magic, w_shift, *x_strides, *y_strides)
    flat_maps = (("map", h * w),) if flat and mode != ELEMENT.value else ()
    problem = dispatch.Problem("dropout_mask", m=c, n=hw, batch=n, dtype=x.dtype,
                               channels_last=channels_last(x) and not flat, extra=(("mode", mode), *flat_maps))

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(dropout_mask_kernel, (dispatch.programs(cfg, problem),), MODE=mode,
                                 ALIGNED=_rows_aligned(problem), FLAT=bool(flat_maps), **cfg.launch_kwargs())

        def run(x, seed):
            y = alloc()
            kernel(x.contiguous() if copy else x, y, seed, *args)
            return y
        return run

    return dispatch.runner(problem, prepare, x, seed)


def _seed_draws(gamma: float) -> tuple[int, int]:
    """DropBlock's seed rows per Philox call and seed threshold (kernels/dropout.py): 16-bit draws, eight rows
    a call, where round(gamma * 2^16) is within 1/128 of gamma * 2^16 (gamma >= 2^-10), else 32-bit draws,
    four rows a call; the threshold round(gamma * 2^b), at most 2^b."""
    bits = 16 if gamma >= 2**-10 else 32
    return 128 // bits, min(round(gamma * 2**bits), 2**bits)


def _drop_block_problem(kernel: str, t: torch.Tensor, block: int, seeds: bool = False) -> dispatch.Problem:
    """`seeds`: pass 2 reads pass 1's seed words rather than drawing (its trips differ)."""
    n, c, h, w = t.shape
    return dispatch.Problem(kernel, m=c, n=w, k=h, batch=n, dtype=t.dtype, channels_last=channels_last(t),
                            extra=(("block", block), ("seeds", True)) if seeds else (("block", block),))


def _seed_words(x: torch.Tensor, block: int) -> int:
    """How many int32 words pass 1 writes the seeds of x's shape into: one per map, 32 seed rows and seed
    column (kernels/dropout.py, seeds_ptr)."""
    n, c, h, w = x.shape
    return n * c * cdiv(h - block + 1, 32) * (w - block + 1)


@dispatch.on_inputs_device
def drop_block_count(x: torch.Tensor, seed: torch.Tensor, block: int, gamma: float) -> Callable:
    """The launch of pass 1 of DropBlock on tensors like these: run(x, seed) -> (count, seeds): the number
    of elements of x's shape that the mask keeps, as a one-element int64 tensor on x's device, and the
    seeds packed one bit each into int32 words (kernels/dropout.py, seeds_ptr), for pass 2 of the same
    call. Draws the seeds and reads nothing else.

    The seed words are a workspace, as split-K's partial sums are, not a stored mask: drop_block2d hands
    them from pass 1 to pass 2 of one forward call and lets them go when it returns (autograd saves the
    seed and the count, never the words). The seed bits live only inside one call; the backward draws
    the seeds again from (seed, logical index), which the cost model predicts cheaper than running pass 1
    again to refill a workspace."""
    n, c, h, w = x.shape
    zeros = functools.partial(torch.zeros, 1, dtype=torch.int64, device=x.device)
    words = functools.partial(torch.empty, _seed_words(x, block), dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return lambda x, seed: (zeros(), words())
    problem = _drop_block_problem("drop_block_count", x, block)
    seed_rows, gamma_bits = _seed_draws(gamma)
    # Pass 1 reads neither x nor y: zero strides (the row strides are constexprs: no compile per shape).
    args = (c, h, w, block, h - block + 1, w - block + 1, gamma_bits, 0.0, 0.0, *(0,) * 8)

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(drop_block_kernel, (dispatch.programs(cfg, problem),), COUNT=True, SEEDS=False,
                                 SEED_ROWS=seed_rows, INT64=False, **cfg.launch_kwargs())

        def run(x, seed):
            count = zeros()  # the programs add into it
            seeds = words()  # the programs write every word
            kernel(x, x, seed, count, seeds, *args)
            return count, seeds
        return run

    return dispatch.runner(problem, prepare, x, seed)


@dispatch.on_inputs_device
def drop_block_apply(x: torch.Tensor, seed: torch.Tensor, count: torch.Tensor, seeds: torch.Tensor | None, block: int,
                     gamma: float, out_channels_last: bool) -> Callable:
    """The launch of pass 2 of DropBlock on tensors like these: run(x, seed, count, seeds) -> y = x * keep *
    numel / (eps + count), eps = 1e-6 as in torchvision. `seeds`: the seed words that pass 1 wrote in the
    same call (`drop_block_count`), read instead of drawing the seeds again; None (the backward) draws
    them from `seed`, the same bits."""
    n, c, h, w = x.shape
    y = empty_like_layout(x.shape, out_channels_last, x.dtype, "meta")
    alloc = _plans.allocator(y, x.device)
    if y.numel() == 0:
        return lambda x, seed, count, seeds: alloc()
    problem = _drop_block_problem("drop_block_apply", x, block, seeds is not None)
    seed_rows, gamma_bits = _seed_draws(gamma)
    args = (c, h, w, block, h - block + 1, w - block + 1, gamma_bits, float(x.numel()), 1e-6, *x.stride(),
            *y.stride())
    int64 = needs_int64(x, y)

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(drop_block_kernel, (dispatch.programs(cfg, problem),), COUNT=False,
                                 SEEDS=seeds is not None, SEED_ROWS=seed_rows, INT64=int64, **cfg.launch_kwargs())

        def run(x, seed, count, seeds):
            y = alloc()
            # Without words the kernel reads none: any pointer stands in.
            kernel(x, y, seed, count, count if seeds is None else seeds, *args)
            return y
        return run

    return dispatch.runner(problem, prepare, x, seed, count, seeds)


# ---------------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with fake implementations for shapes) and their autograd.
# The backward of each mask op is the same op on dy, with the saved seed (and DropBlock's count): the
# saved tensors hold one or two numbers, never a mask.
# ---------------------------------------------------------------------------------------------------------

@torch.library.custom_op("tritonconv::dropout_mask", mutates_args=(),
                         schema="(Tensor x, Tensor seed, int mode, float p, int size, bool channels_last) -> Tensor")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _mask_op(x, seed, mode, p, size, channels_last):
    return apply_mask(x, seed, mode, p, size, channels_last)(x, seed)


@_mask_op.register_fake
def _(x, seed, mode, p, size, channels_last):
    return _empty_output(x, channels_last, x.device)


_plans.plannable("dropout_mask", 2, apply_mask)


def _mask_setup_context(ctx, inputs, output):
    _x, seed, *params = inputs
    ctx.save_for_backward(seed)
    ctx.params = params


def _mask_backward(ctx, dy):
    (seed,) = ctx.saved_tensors
    return input_grads(ctx, _plans.call("dropout_mask", dy, seed, *ctx.params))


_MASK_AUTOGRAD = _plans.register_autograd(_mask_op, _mask_backward, _mask_setup_context)


@torch.library.custom_op("tritonconv::drop_block_count", mutates_args=(),
                         schema="(Tensor x, Tensor seed, int block, float gamma) -> (Tensor, Tensor)")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _drop_block_count_op(x, seed, block, gamma):
    return drop_block_count(x, seed, block, gamma)(x, seed)


@_drop_block_count_op.register_fake
def _(x, seed, block, gamma):
    return (torch.empty(1, dtype=torch.int64, device=x.device),
            torch.empty(_seed_words(x, block), dtype=torch.int32, device=x.device))


@torch.library.custom_op("tritonconv::drop_block_apply", mutates_args=(),
                         schema="(Tensor x, Tensor seed, Tensor count, Tensor? seeds, int block, float gamma, "
                                "bool channels_last) -> Tensor")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _drop_block_apply_op(x, seed, count, seeds, block, gamma, channels_last):
    return drop_block_apply(x, seed, count, seeds, block, gamma, channels_last)(x, seed, count, seeds)


@_drop_block_apply_op.register_fake
def _(x, seed, count, seeds, block, gamma, channels_last):
    return empty_like_layout(x.shape, channels_last, x.dtype, x.device)


_plans.plannable("drop_block_apply", 4, drop_block_apply)


def _drop_block_setup_context(ctx, inputs, output):
    # The seed words are left behind: the backward draws the seeds again.
    _x, seed, count, _seeds, *params = inputs
    ctx.save_for_backward(seed, count)
    ctx.params = params


def _drop_block_backward(ctx, dy):
    seed, count = ctx.saved_tensors
    return input_grads(ctx, _plans.call("drop_block_apply", dy, seed, count, None, *ctx.params))


_DROP_BLOCK_AUTOGRAD = _plans.register_autograd(_drop_block_apply_op, _drop_block_backward, _drop_block_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------------------------------------

def _mask(name: str, input: torch.Tensor, active: bool, seed: int | None,
          checked: Callable[[], tuple[int, float, int]], *args: object) -> torch.Tensor:
    """The public mask op `name`: `checked()` checks the call's arguments (`args` besides input, active and
    the seed) and returns the mask's (mode, p, size); the op is the identity unless `active`."""
    if _plans.eager(input):
        check_seed(seed)
        key = (name, _plans.meta(input), active, *args)
        plan = _plans.plan(key, lambda: _mask_plan(input, active, *checked()))
        return plan(_plans.needs_grad(input), input, philox_seed(seed, input.device) if active else None)
    mode, p, size = checked()
    check_seed(seed)
    if not active:
        return input
    return torch.ops.tritonconv.dropout_mask(input, philox_seed(seed, input.device), mode, p, size,
                                             channels_last(input))


def _mask_plan(input: torch.Tensor, active: bool, mode: int, p: float, size: int) -> _plans.Plan:
    """The plan (see tritonconv._plans) of a checked mask op: the identity unless `active`."""
    if not active:
        return _plans.Plan(lambda x, seed: x)
    cl = channels_last(input)
    return _plans.Plan(apply_mask(input, _plans.example_seed(input), mode, p, size, cl), (mode, p, size, cl),
                       _MASK_AUTOGRAD, device=input.device)


def _check_square(size: int, name: str, x: torch.Tensor) -> int:
    """A square's side: an int from 1 to the smaller side of x's maps."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be an int, got {type(size).__name__}")
    h, w = x.shape[2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"{name} must be between 1 and the map's smaller side min(H, W) = {min(h, w)}, "
                         f"got {size}")
    return size


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, *, seed: int | None = None) -> torch.Tensor:
    """Element dropout, as `torch.nn.functional.dropout`:

        y = x * m / (1 - p),   m ~ Bernoulli(1 - p) independently for every element

    (y = 0 everywhere for p = 1). Any shape; a 4-D input keeps its memory format and gets the same mask in
    NCHW and channels_last. Dropped elements are exact zeros, even where x is inf or NaN. Returns `input`
    itself, launching nothing, when not training or p = 0.

    Args:
        input: float32, float16 or bfloat16 tensor.
        p: drop probability in [0, 1].
        training: apply dropout (True) or the identity (False).
        seed: None draws the Philox seed from torch's default generator of input's device
            (reproducible under torch.manual_seed); an int in [0, 2^63) gives the same mask every call.
    """
    def checked() -> tuple[int, float, int]:
        check_tensor(input, "input", ndim=None)
        return ELEMENT.value, check_probability(p), 0

    return _mask("dropout", input, training and p != 0.0, seed, checked, p)


def spatial_dropout2d(input: torch.Tensor, p: float = 0.5, training: bool = True, *,
                      seed: int | None = None) -> torch.Tensor:
    """Spatial dropout, as `torch.nn.functional.dropout2d`: whole feature maps are dropped,

        y[n, c, h, w] = x[n, c, h, w] * m[n, c] / (1 - p),   m ~ Bernoulli(1 - p) per (sample, channel)

    since neighbouring pixels of a map are strongly correlated and dropping single ones barely
    regularises. In NCHW the dropped maps are never read. Returns `input` itself when not training or
    p = 0. Arguments as `dropout`; input is (N, C, H, W), NCHW or channels_last.

    Other ranks behave as in `F.dropout2d`, with its warnings: a 3-D input is read as (N, C, L) (torch's
    historical channel-wise 1-D dropout, not an unbatched (C, H, W)), and any rank >= 2 other than 3 or 4
    (deprecated in torch) drops whole (dim 0, dim 1) blocks.
    """
    if isinstance(input, torch.Tensor) and input.dim() != 4:
        check_tensor(input, "input", ndim=None)
        if input.dim() < 2:
            raise ValueError(f"input must be (N, C, H, W), got shape {tuple(input.shape)}: spatial dropout drops "
                             "(dim 0, dim 1) feature maps, so it needs at least 2 dimensions")
        _warn_like_dropout2d(input.dim())
        # Every rank's (dim 0, dim 1) blocks as the maps of a 4-D (N, C, 1, rest) view.
        maps = input.reshape(*input.shape[:2], 1, -1)
        y = spatial_dropout2d(maps, p, training, seed=seed)
        return input if y is maps else y.reshape(input.shape)

    def checked() -> tuple[int, float, int]:
        check_tensor(input, "input")
        return CHANNEL.value, check_probability(p), 0

    return _mask("spatial_dropout2d", input, training and p != 0.0, seed, checked, p)


def _warn_like_dropout2d(ndim: int) -> None:
    """The warnings F.dropout2d gives for an input of rank `ndim` (none for 4)."""
    if ndim not in (3, 4):
        warnings.warn(f"dropout2d: Received a {ndim}-D input to dropout2d, which is deprecated "
                      "and will result in an error in a future release. To retain the behavior "
                      "and silence this warning, please use dropout instead. Note that dropout2d "
                      "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
                      "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).", stacklevel=3)
    if ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
                      "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
                      "is the channel dim. This behavior will change in a future release to interpret the "
                      "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
                      "channel-wise dropout behavior, please switch to using dropout1d instead.", stacklevel=3)


def drop_block2d(input: torch.Tensor, p: float, block_size: int, training: bool = True, *,
                 seed: int | None = None) -> torch.Tensor:
    """DropBlock (Ghiasi et al. 2018) with the semantics of torchvision's `drop_block2d`:

        gamma = p * H * W / (bs^2 * (H - bs + 1) * (W - bs + 1))
        s[n, c, i, j] ~ Bernoulli(gamma)  on the seed grid 0 <= i <= H - bs, 0 <= j <= W - bs
        m[n, c, h, w] = 0 if some seed s[n, c, i, j] = 1 has i <= h < i + bs and j <= w < j + bs, else 1
        y = x * m * numel(m) / (1e-6 + sum(m))

    so every dropped block lies wholly inside the map, about a fraction p of the elements is dropped,
    and one scale for the whole tensor keeps the expected sum. For odd bs this is exactly torchvision's
    mask (it pads the seed grid by bs // 2 and max-pools it, so a seed is its block's centre). Even bs has
    no centre: torchvision's symmetric padding by bs // 2 then yields a mask two rows and columns larger
    than the map (upstream reports: size-mismatch errors, shifted masks). Here a block is, for every bs,
    the bs x bs square whose top-left corner is the seed, so it always lies inside the map and gamma keeps
    its meaning.

    Two passes, no stored mask: pass 1 draws the seeds, counts the kept elements into one int64 on the
    device (no read of x) and packs the seeds one bit each into a workspace; pass 2 reads them from there
    and writes y (dropped elements as exact zeros). The seed bits live only inside one call: the
    workspace is freed when the forward returns, and the backward is pass 2 applied to dy with the saved
    seed and count, drawing the seeds again (cheaper than a second pass 1 to refill a workspace). Returns
    `input` itself when not training or p = 0.

    Args:
        input: (N, C, H, W) float32, float16 or bfloat16, NCHW or channels_last.
        p: in [0, 1]; the expected fraction of dropped elements, away from the borders.
        block_size: side bs of the square blocks, 1 <= bs <= min(H, W).
        training, seed: as `dropout`.
    """
    active = training and p != 0.0
    if _plans.eager(input):
        check_seed(seed)
        key = ("drop_block2d", _plans.meta(input), active, p, block_size)
        count, plan = _plans.plan(key, lambda: _drop_block_plan(input, active, p, block_size))
        seed_t = philox_seed(seed, input.device) if active else None
        # Pass 1 reads nothing of x and records no autograd: its plan runs on x as it is.
        passed = (None, None) if count is None else count(False, input, seed_t)
        return plan(_plans.needs_grad(input), input, seed_t, *passed)
    p, block, gamma = _drop_block_checked(input, p, block_size)
    check_seed(seed)
    if not active:
        return input
    seed_t = philox_seed(seed, input.device)
    # Pass 1 only needs x's shape: detached, since the count is not differentiated.
    count, seeds = torch.ops.tritonconv.drop_block_count(input.detach(), seed_t, block, gamma)
    return torch.ops.tritonconv.drop_block_apply(input, seed_t, count, seeds, block, gamma, channels_last(input))


def _drop_block_checked(input: torch.Tensor, p: float, block_size: int) -> tuple[float, int, float]:
    """Check a drop_block2d call: p, the block size and gamma, the seeds' probability."""
    check_tensor(input, "input")
    p = check_probability(p)
    block = _check_square(block_size, "block_size", input)
    h, w = input.shape[2:]
    return p, block, p * h * w / (block**2 * (h - block + 1) * (w - block + 1))


def _drop_block_plan(input: torch.Tensor, active: bool, p: float,
                     block_size: int) -> tuple[_plans.Plan | None, _plans.Plan]:
    """Check a drop_block2d call and plan it (see tritonconv._plans): pass 1's plan on (x, seed) -> (count,
    seeds) (None when the op is the identity), and pass 2's plan on (x, seed, count, seeds)."""
    p, block, gamma = _drop_block_checked(input, p, block_size)
    if not active:
        return None, _plans.Plan(lambda x, seed, count, seeds: x)
    seed = _plans.example_seed(input)
    count = _plans.Plan(drop_block_count(input, seed, block, gamma), device=input.device)
    cl = channels_last(input)
    # Tuning pass 2 needs a count and seed words, not the call's: "no seeds, every element kept" spares a
    # pass-1 launch per plan.
    kept = torch.full((1,), input.numel(), dtype=torch.int64, device=input.device)
    no_seeds = torch.zeros(_seed_words(input, block), dtype=torch.int32, device=input.device)
    apply = drop_block_apply(input, seed, kept, no_seeds, block, gamma, cl)
    return count, _plans.Plan(apply, (block, gamma, cl), _DROP_BLOCK_AUTOGRAD, device=input.device)


def cutout2d(input: torch.Tensor, size: int, training: bool = True, *, seed: int | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) on every feature map: one square zeroed per (sample, channel),

        (cy, cx) ~ Uniform({0..H-1} x {0..W-1})   independently per (n, c)
        y[n, c, h, w] = 0 if cy - size//2 <= h < cy - size//2 + size and cx - size//2 <= w < cx - size//2 + size
                        else x[n, c, h, w]

    The square is centred on (cy, cx) for odd sizes (for even sizes the centre is the lower-right of its
    middle four pixels) and clipped where it crosses the border, so squares near the border are smaller.
    No rescaling. Returns `input` itself when not training.

    Args:
        input: (N, C, H, W) float32, float16 or bfloat16, NCHW or channels_last.
        size: side of the square, 1 <= size <= min(H, W).
        training, seed: as `dropout`.
    """
    def checked() -> tuple[int, float, int]:
        check_tensor(input, "input")
        return CUTOUT.value, 0.0, _check_square(size, "size", input)

    return _mask("cutout2d", input, bool(training), seed, checked, size)
