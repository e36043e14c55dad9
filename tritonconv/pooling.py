"""max_pool2d and max_pool2d_dropout: configurations and launchers for the pooling kernels, torch.library
ops with autograd, public ops.

Both ops run one forward kernel (`tritonconv.kernels.pooling`) in one of three modes, MAX, DROPOUT
(training) and WEIGHTED (eval), and one backward kernel. MAX and DROPOUT save one byte per output, the
winning tap, instead of torch's int64 index (and no dropout mask: the byte already says which unit
survived and won); WEIGHTED saves the input and recomputes the ranks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (accepts_unbatched, channels_last, check_probability, check_seed, check_tensor,
                                empty_like_layout, output_size, pair, philox_seed)
from tritonconv._shared import input_grads
from tritonconv.kernels.pooling import DROPOUT, MAX, WEIGHTED, max_pool2d_backward_kernel, max_pool2d_forward_kernel


@dataclass(frozen=True)
class PoolGeometry:
    """Everything about a pooling call except the tensors' contents."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    out_height: int
    out_width: int

    def launch_args(self) -> tuple[int, ...]:
        """Sizes and geometry in the order the pooling kernels take them."""
        return (self.channels, self.height, self.width, self.out_height, self.out_width, *self.kernel,
                *self.stride, *self.pad, *self.dilation)

    def span(self, axis: int) -> int:
        """How many blocks of units (the dropout draws' grain: 2 rows x 4 columns) a window overlaps along
        `axis`, at most.

        With b units per block along the axis, a window whose first tap is at o (o = out*s - p) covers
        o .. o + (k-1)*d, so blocks o//b through (o + (k-1)*d)//b: ((o % b) + (k-1)*d) // b + 1 of them.
        o % b takes the values of -p + s*out % b over the outputs.
        """
        k, s, p, d = self.kernel[axis], self.stride[axis], self.pad[axis], self.dilation[axis]
        out = (self.out_height, self.out_width)[axis]
        b = (2, 4)[axis]
        phases = {(s * o - p) % b for o in range(min(out, b))}
        return max((q + (k - 1) * d) // b + 1 for q in phases)

    def fixed_taps(self) -> int:
        """The side of a common square window (2 or 3), which max pooling unrolls with a constexpr size;
        0 for any other window, walked with runtime sizes."""
        return self.kernel[0] if self.kernel in ((2, 2), (3, 3)) else 0

    def pairs(self) -> bool:
        """Whether max-pooling dropout takes its 2x2 stride-2 fast path (kernels.pooling `_dropout_pairs`):
        no padding, no dilation."""
        return self.kernel == (2, 2) and self.stride == (2, 2) and self.pad == (0, 0) and self.dilation == (1, 1)

    def _celled(self) -> bool:
        """Whether lanes can take cells (`window_cell`, `cell`): a common square window (2, 3) at a square
        stride of 1 to 3, undilated, so every (pixel or output, window) tap is a compile-time constant."""
        return bool(self.fixed_taps()) and self.stride[0] == self.stride[1] in (1, 2, 3) and self.dilation == (1, 1)

    def window_cell(self) -> tuple[int, int]:
        """The outputs (rows, columns) each lane of the max-pooling dropout forward, training or eval, takes
        (kernels.pooling `_window_cells`): a common square window (2, 3) at a square stride of 1 to 3 with
        square padding, undilated, and not the pair path; (0, 0) otherwise. A cell spans an even number of
        input rows and a multiple of 4 columns (whole 2x4 blocks of draws). Stride-1 cells are 8x8: a
        misaligned patch (padding 1) draws 6x4 blocks for 64 outputs, where 4x8 cells drew 4x4 for 32.
        Stride-2 cells are 8x4 (9x3 blocks for 32 outputs; 4x4 drew 5x3 for 16): the kernel holds about two
        rows of blocks at a time, so a taller cell costs few registers; 16x4 and 4x8 predicted slower
        (`python -m bench.cost --kernel max_pool2d_forward`), in eval (sorting, no draws) as well, as were
        2x4, 4x4 and 8x8."""
        common = self._celled() and self.pad[0] == self.pad[1] and not self.pairs()
        return {1: (8, 8), 2: (8, 4), 3: (2, 4)}[self.stride[0]] if common else (0, 0)

    def window_cell_lanes(self, channels_last: bool, draws: bool) -> tuple[int, bool]:
        """Lanes per row of `window_cell`'s cells (kernels.pooling `_window_cells`) and whether they are
        padded so that programs hold whole rows and neighbouring lanes share their halo draws: the cells a
        row of outputs needs, and at least enough that the grid's own input columns (cell_w * stride a
        cell) cover W, so that the last lane's right halo lies past the input. Padded to a power of two:
        in NCHW up to 128 (a program's lanes, a row of cells within a warp: shuffles); channels_last at
        stride 1 up to 16 (a program is one row of cells and 128 / lanes channels; its cells span warps,
        so the gathers go through shared memory, which repays only stride 1's two halo blocks of four;
        predicted slower at stride 2: `python -m bench.cost --kernel max_pool2d_forward`). Without `draws`
        (eval) there is nothing to share: the cells a row of outputs needs."""
        cell_w = self.window_cell()[1]
        if not draws:
            return -(-self.out_width // cell_w), False
        lanes = max(-(-self.out_width // cell_w), -(-self.width // (cell_w * self.stride[1])))
        padded = 1 << (lanes - 1).bit_length()
        limit = (16 if self.stride[1] == 1 else 0) if channels_last else 128
        return (padded, True) if padded <= limit else (lanes, False)

    def min_units(self) -> int:
        """The fewest taps of any window that lie inside the input (at least one: a window starts inside the
        input or its left padding, and the padding is at most half the window)."""
        def fewest(axis: int) -> int:
            size, k, s, p, d = (self.height, self.width)[axis], self.kernel[axis], self.stride[axis], \
                self.pad[axis], self.dilation[axis]
            out = (self.out_height, self.out_width)[axis]
            return min(sum(0 <= o * s - p + t * d < size for t in range(k)) for o in range(out))
        return fewest(0) * fewest(1)

    def cell(self, weighted: bool) -> int:
        """The side of the pixel cell each lane of the backward takes (kernels.pooling
        `_backward_cells`): a common square window (2, 3) at a square stride of 1 to 3, undilated; the
        stride, but 4 at stride 1, so that stride-1 lanes share windows too: a 4x4 cell loads 36 windows
        (2.25 a pixel) where a 2x2 cell loads 16 (4 a pixel). The weighted backward, which loads the units
        under its windows as well, takes 4 at stride 2 too: 3x3 windows' 7x7 units for 16 pixels, where a
        2x2 cell loads 5x5 for 4 (faster than 2 or 6 by `python -m bench.cost --kernel max_pool2d_backward`).
        0: one pixel a lane."""
        if not self._celled():
            return 0
        return {1: 4, 2: 4 if weighted else 2, 3: 3}[self.stride[0]]

    def cell_windows(self, cell: int) -> int:
        """The windows a lane of `cell` x `cell` pixels loads (`_backward_cells`): the gather(axis) windows of
        its first pixel and one more per stride of the cell, per axis."""
        return (self.gather(0) + cell // self.stride[0] - 1) * (self.gather(1) + cell // self.stride[1] - 1)

    def cell_patch(self, cell: int) -> int:
        """The units a lane of `cell` x `cell` pixels of the weighted backward loads (`_backward_cells`): the
        square under its windows, (windows per axis - 1) * stride + kernel on a side."""
        side = (self.gather(0) + cell // self.stride[0] - 2) * self.stride[0] + self.kernel[0]
        return side * side if cell else 0

    def gather(self, axis: int) -> int:
        """How many windows along `axis` can hold one input position as a tap, at most: the windows
        starting in the (k-1)*d + 1 positions at or before it, one every s."""
        return (self.kernel[axis] - 1) * self.dilation[axis] // self.stride[axis] + 1


# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch). A pooling Problem has m = C, n = output pixels (forward) or
# input pixels (backward) per map, k = taps, batch = N, extra = the mode.
# ---------------------------------------------------------------------------------------------------------

def _pool_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """About 1024 outputs per program (more for the max backward and the dropout forward, below): pixels
    first in NCHW (contiguous along a row of the map), channels first in channels_last (contiguous: 64
    channels make 128-byte runs in 16-bit). 4 warps (8 outputs per thread), except the dropout forward
    that walks its windows' blocks, which holds four Philox words per output: 8 warps halve the registers
    each thread needs for them. Weighted pooling with a rank loop inside the tap loop takes 256 outputs: at
    1024 its per-pixel backward spills on sm_80 (its cells: below); the forward's sorted 2x2 and 3x3
    windows take 1024. Registers and spills of every configuration:
    `python -m bench.static --kernel max_pool2d_forward max_pool2d_backward --space full --target sm_90
    sm_80`. The interpreter takes tiles of up to 4096 so that the tests run few programs."""
    extra = dict(problem.extra)
    mode = extra["mode"]
    ranked = mode == WEIGHTED.value and not (problem.kernel == "max_pool2d_forward" and extra["taps"])
    budget = 4096 if interpreter else (256 if ranked else 1024)
    warps = 4
    if problem.kernel == "max_pool2d_backward" and (mode != WEIGHTED.value or extra["cell"]):
        # The backward's per-pixel work (its windows' coordinates, found by division) is shared by the
        # tile's channels and its per-element work is a few instructions per window: 4096 pixels (32 a
        # thread) amortise the first. A lane of a cell holds two values per window, a sum per pixel and
        # its pointers to dy, idx and dx (two registers each; the windows and pixels are constant offsets
        # from them): as many cells a thread as fit about 192 registers (2x2 stride 2: 16; 3x3 stride 2:
        # 8; 3x3 stride 1, 4x4 cells: 2; without the pointers' share, 32 cells of 2x2 spilled with triton
        # 3.6). A weighted lane holds its windows' dy and its patch's units (3x3, 4x4 cells: 2 a thread at
        # stride 2, 1 at stride 1).
        budget = 4096
        if extra["cell"]:
            per_thread = 192 // (extra["held"] + extra["cell"] ** 2 + 4)
            budget = 128 << (per_thread.bit_length() - 1)
    if problem.kernel == "max_pool2d_forward" and mode == DROPOUT.value and not interpreter:
        # Its Philox calls make it issue-bound: more outputs a thread amortise the per-program and per-pair
        # work (`python -m bench.cost --kernel max_pool2d_forward`): the 2x2 stride-2 path (PAIRS) holds two
        # words per output and takes 4096 (32 a thread; 2048 in float32, whose 4096 spill 140 B with triton
        # 3.6, the GPU machine's), the window walk 2048 at 8 warps (8 a thread).
        budget = 4096 if extra["pairs"] and problem.dtype != torch.float32 else 2048
        warps = 4 if extra["pairs"] else 8
    if problem.kernel == "max_pool2d_forward" and extra["cell"] and not interpreter:
        # A lane of a cell holds about two rows of its patch's 2x4 blocks of units and keep flags at a time
        # (`_window_cells`), and in eval a window's sorting network: one cell a thread.
        budget, warps = 128, 4
    if problem.channels_last and not interpreter and extra.get("shared_row"):
        # Cells padded to whole rows whose lanes share their draws (`PoolGeometry.window_cell_lanes`): a row
        # a program.
        block_p = extra["shared_row"]
        block_c = heuristics.pow2_clamp(problem.m, 1, budget // block_p)
    elif problem.channels_last and not interpreter:
        block_c = heuristics.pow2_clamp(problem.m, 1, 64)
        block_p = heuristics.pow2_clamp(problem.n, 1, budget // block_c)
    else:
        block_p = heuristics.pow2_clamp(problem.n, 1, min(budget, 512))
        if extra["cell"] and not interpreter:
            # A map's cells rarely fill whole blocks (3x3 s1 at 56x56: 98 forward cells, 128 lanes): take
            # the block with the fewest idle lanes and as many channels as the budget leaves.
            block_p = _fewest_idle(problem.n, block_p)
        block_c = heuristics.pow2_clamp(problem.m, 1, max(1, budget // block_p))
    return dispatch.Config.of(num_warps=warps, num_stages=1, BLOCK_C=block_c, BLOCK_P=block_p)


def _fewest_idle(n: int, largest: int) -> int:
    """The power of two from 8 to `largest` that covers n lanes with the fewest idle ones (the larger of
    equals)."""
    return heuristics.fewest_idle(n, [b for b in (8, 16, 32, 64, 128, 256, 512) if b <= largest] or [largest])


def _pool_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Tiles of 256 to 4096 outputs (or the largest that fits a smaller problem), no axis over twice its
    extent."""
    fits = {"BLOCK_C": [v for v in (1, 2, 4, 8, 16, 32, 64, 128) if v <= max(1, 2 * problem.m)],
            "BLOCK_P": [v for v in (8, 16, 32, 64, 128, 256, 512, 1024) if v <= max(8, 2 * problem.n)]}
    smallest = min(256, fits["BLOCK_C"][-1] * fits["BLOCK_P"][-1])
    return [cfg for cfg in dispatch.product_space(num_warps=(2, 4, 8), num_stages=(1,), **fits)
            if smallest <= cfg["BLOCK_C"] * cfg["BLOCK_P"] <= 4096]


def _pool_trips(problem: dispatch.Problem, config: dispatch.Config, args: Mapping[str, object]) -> tuple[float, ...]:
    """The window's taps (weighted pooling: and, inside, the rank loop over the taps again); the dropout
    forward walks its SPAN_H x SPAN_W blocks of units instead; a common window (TAPS) and the pair path
    have no loop. The backward unrolls its GATHER_H x GATHER_W
    candidate windows: no loop, or (weighted) one rank loop per candidate."""
    taps = args["KH"] * args["KW"]
    if problem.kernel == "max_pool2d_forward" and (args["PAIRS"] or args["TAPS"]):
        return ()
    if problem.kernel == "max_pool2d_backward":
        return (taps,) * (args["GATHER_H"] * args["GATHER_W"]) if args["WEIGHTED"] and not args["CELL"] else ()
    if args["MODE"] == DROPOUT.value:
        return (args["SPAN_H"], args["SPAN_W"])
    return (taps, taps) if args["MODE"] == WEIGHTED.value else (taps,)


dispatch.register("max_pool2d_forward", "pooling", max_pool2d_forward_kernel, _pool_config, _pool_space,
                  programs=dispatch.channel_pixel_programs, trips=_pool_trips)
dispatch.register("max_pool2d_backward", "pooling", max_pool2d_backward_kernel, _pool_config, _pool_space,
                  programs=dispatch.channel_pixel_programs, trips=_pool_trips)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

def _rows_in_chunks(width: int, *tensors: torch.Tensor) -> bool:
    """Whether the kernels may load these tensors' rows in vector chunks of 4 columns (kernels/pooling.py
    `_columns`): every row contiguous and starting on a multiple of 4 elements, and `width` a multiple of 4,
    so that a chunk lies wholly in or out of a row and one mask serves its 4 columns."""
    return width % 4 == 0 and all(t.stride(3) == 1 and t.stride(2) % 4 == 0 for t in tensors)


def _index_dtype(geo: PoolGeometry) -> torch.dtype:
    """The per-output tap record: taps 0..KK-1 and KK for "no unit kept" fit a byte up to 255 taps."""
    return torch.uint8 if geo.kernel[0] * geo.kernel[1] <= 255 else torch.int32


@dispatch.on_inputs_device
def pool_forward(x: torch.Tensor, geo: PoolGeometry, mode: int, p: float, seed: torch.Tensor | None,
                 store_index: bool) -> Callable:
    """The forward launch on tensors like these: run(x, seed) -> (y, idx), y in x's memory format and idx,
    when `store_index` (MAX, DROPOUT), the winning tap per output, else an empty uint8 tensor."""
    shape = (geo.batch, geo.channels, geo.out_height, geo.out_width)
    cl = channels_last(x)
    y = empty_like_layout(shape, cl, x.dtype, "meta")
    alloc_y = _plans.allocator(y, x.device)
    alloc_idx = (_plans.allocator(empty_like_layout(shape, cl, _index_dtype(geo), "meta"), x.device) if store_index
                 else functools.partial(torch.empty, 0, dtype=torch.uint8, device=x.device))
    if y.numel() == 0:
        return lambda x, seed: (alloc_y(), alloc_idx())
    pairs = mode == DROPOUT.value and geo.pairs()
    cell_h, cell_w = geo.window_cell() if mode != MAX.value else (0, 0)
    taps = geo.fixed_taps() if mode in (MAX.value, WEIGHTED.value) or cell_h else 0
    # PAIRS lanes are output pairs: its pixels are OH rows of whole pairs; CELL lanes are cells of outputs.
    pixels = geo.out_height * (2 * heuristics.cdiv(geo.out_width, 2) if pairs else geo.out_width)
    cells_w, share = geo.window_cell_lanes(cl, mode == DROPOUT.value) if cell_h else (0, False)
    if cell_h:
        pixels = heuristics.cdiv(geo.out_height, cell_h) * cells_w
    problem = dispatch.Problem(
        "max_pool2d_forward", m=geo.channels, n=pixels, k=geo.kernel[0] * geo.kernel[1],
        batch=geo.batch, dtype=x.dtype, channels_last=cl,
        extra=(("mode", mode), ("pairs", pairs), ("cell", cell_h * cell_w), ("taps", taps),
               ("shared_row", cells_w if share else 0)))
    # NCHW cells load a block row's four units at once (kernels/pooling.py `_window_cells`).
    cell_runs = bool(cell_h) and not cl and _rows_in_chunks(geo.width, x)
    # DROPOUT's 16-bit drop threshold (kernels/pooling.py).
    args = (*geo.launch_args(), p, round(p * 2**16), *x.stride(), *y.stride())

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(max_pool2d_forward_kernel, (dispatch.programs(cfg, problem),), MODE=mode,
                                 STORE_INDEX=store_index, PAIRS=pairs, TAPS=taps,
                                 MIN_UNITS=geo.min_units() if mode == WEIGHTED.value and taps else 0,
                                 SPAN_H=geo.span(0),
                                 SPAN_W=geo.span(1), CELL_H=cell_h, CELL_W=cell_w, CELLS_W=cells_w,
                                 STRIDE=geo.stride[0] if cell_h else 0, PAD=geo.pad[0] if cell_h else 0,
                                 CELL_SXH=x.stride(2) if cell_h else 0, CELL_SXW=x.stride(3) if cell_h else 0,
                                 CELL_RUNS=cell_runs,
                                 CELLS_FIRST=bool(cell_h) and cl, **cfg.launch_kwargs())

        def run(x, seed):
            y, idx = alloc_y(), alloc_idx()
            kernel(x, y, idx if store_index else y, x if seed is None else seed, *args)
            return y, idx
        return run

    return dispatch.runner(problem, prepare, x, seed)


@dispatch.on_inputs_device
def pool_backward(dy: torch.Tensor, saved: torch.Tensor, geo: PoolGeometry, mode: int, p: float,
                  out_channels_last: bool) -> Callable:
    """The launch of dL/dx on tensors like these: run(dy, saved) -> dx, from dy and `saved`: the input for
    WEIGHTED, else the per-output winning taps."""
    weighted = mode == WEIGHTED.value
    dx = empty_like_layout((geo.batch, geo.channels, geo.height, geo.width), out_channels_last, dy.dtype, "meta")
    alloc = _plans.allocator(dx, dy.device)
    if dx.numel() == 0:
        return lambda dy, saved: alloc()
    cell = geo.cell(weighted)
    # CELL lanes are cells of pixels, cell x cell each, starting at the top-left padding.
    pixels = (heuristics.cdiv(geo.height + geo.pad[0], cell) * heuristics.cdiv(geo.width + geo.pad[1], cell) if cell
              else geo.height * geo.width)
    problem = dispatch.Problem(
        "max_pool2d_backward", m=geo.channels, n=pixels, k=geo.kernel[0] * geo.kernel[1],
        batch=geo.batch, dtype=dy.dtype, channels_last=out_channels_last,
        extra=(("mode", mode), ("cell", cell),
               ("held", geo.cell_windows(cell) + (geo.cell_patch(cell) if weighted else geo.cell_windows(cell)))))
    # Strides of the tensor the kernel does not read are placeholders.
    idx_strides = dy.stride() if weighted else saved.stride()
    x_strides = saved.stride() if weighted else dy.stride()
    args = (*geo.launch_args(), p, *dy.stride(), *idx_strides, *x_strides, *dx.stride())
    # Stride-1 cells load each row of their windows as two vector loads of 4 columns (kernels/pooling.py
    # `_chunk`).
    row_runs = cell != 0 and geo.stride == (1, 1) and not weighted and _rows_in_chunks(geo.out_width, dy, saved)

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(max_pool2d_backward_kernel, (dispatch.programs(cfg, problem),), WEIGHTED=weighted,
                                 GATHER_H=geo.gather(0), GATHER_W=geo.gather(1), DILATED=max(geo.dilation) > 1,
                                 STRIDE=geo.stride[0] if geo.stride[0] == geo.stride[1] in (1, 2, 3) else 0,
                                 SAME_STRIDES=not weighted and not cell and dy.stride() == saved.stride(),
                                 CELL=cell, TAPS=geo.fixed_taps(), ROW_RUNS=row_runs,
                                 **cfg.launch_kwargs())

        def run(dy, saved):
            dx = alloc()
            kernel(dy, saved, saved, dx, *args)
            return dx
        return run

    return dispatch.runner(problem, prepare, dy, saved)


# ---------------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with fake implementations for shapes) and their autograd. A
# geometry travels as plain ints: (kernel, stride, top/left padding, dilation, output size), with the mode
# and p.
# ---------------------------------------------------------------------------------------------------------

_POOL_SCHEMA = "int[] kernel, int[] stride, int[] padding, int[] dilation, int[] output_size, int mode, float p"


def _geometry(x_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], output_size: Sequence[int]) -> PoolGeometry:
    return PoolGeometry(*x_shape, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), *output_size)


def _geometry_args(geo: PoolGeometry) -> tuple:
    return list(geo.kernel), list(geo.stride), list(geo.pad), list(geo.dilation), [geo.out_height, geo.out_width]


@torch.library.custom_op("tritonconv::max_pool2d", mutates_args=(),
                         schema=f"(Tensor x, Tensor? seed, {_POOL_SCHEMA}, bool store_index) -> (Tensor, Tensor)")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _pool_op(x, seed, kernel, stride, padding, dilation, output_size, mode, p, store_index):
    geo = _geometry(x.shape, kernel, stride, padding, dilation, output_size)
    return pool_forward(x, geo, mode, p, seed, store_index)(x, seed)


@_pool_op.register_fake
def _(x, seed, kernel, stride, padding, dilation, output_size, mode, p, store_index):
    shape = (x.shape[0], x.shape[1], *output_size)
    geo = _geometry(x.shape, kernel, stride, padding, dilation, output_size)
    idx = (empty_like_layout(shape, channels_last(x), _index_dtype(geo), x.device) if store_index
           else x.new_empty(0, dtype=torch.uint8))
    return empty_like_layout(shape, channels_last(x), x.dtype, x.device), idx


@torch.library.custom_op("tritonconv::max_pool2d_backward", mutates_args=(),
                         schema=f"(Tensor dy, Tensor saved, int[] input_size, {_POOL_SCHEMA}, bool channels_last) "
                                "-> Tensor")
@dispatch.on_inputs_device  # the launch runs under its tensors\' device
def _pool_backward_op(dy, saved, *args):
    return _pool_backward_plan(dy, saved, *args)(dy, saved)


@dispatch.on_inputs_device  # the launch is planned under its tensors' device
def _pool_backward_plan(dy, saved, input_size, kernel, stride, padding, dilation, output_size, mode, p, channels_last):
    geo = _geometry(input_size, kernel, stride, padding, dilation, output_size)
    return pool_backward(dy, saved, geo, mode, p, channels_last)


_plans.plannable("max_pool2d_backward", 2, _pool_backward_plan)


@_pool_backward_op.register_fake
def _(dy, saved, input_size, kernel, stride, padding, dilation, output_size, mode, p, channels_last):
    return empty_like_layout(input_size, channels_last, dy.dtype, dy.device)


def _pool_setup_context(ctx, inputs, output):
    """Save the winning taps (MAX, DROPOUT) or the input (WEIGHTED): no mask, no int64 index."""
    x, _seed, *geometry, _store_index = inputs
    mode = geometry[-2]
    ctx.save_for_backward(x if mode == WEIGHTED.value else output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.geometry = geometry
    ctx.input = (list(x.shape), channels_last(x))


def _pool_backward(ctx, dy, _didx):
    (saved,) = ctx.saved_tensors
    input_size, out_channels_last = ctx.input
    dx = _plans.call("max_pool2d_backward", dy, saved, input_size, *ctx.geometry, out_channels_last)
    return input_grads(ctx, dx)


_AUTOGRAD = _plans.register_autograd(_pool_op, _pool_backward, _pool_setup_context)


def _store_index(mode: int, input: torch.Tensor) -> bool:
    """Whether the forward stores the winning taps: when a backward can follow (not for WEIGHTED, whose
    backward reads the input instead)."""
    return mode != WEIGHTED.value and input.requires_grad and torch.is_grad_enabled()


def _pool(input: torch.Tensor, geo: PoolGeometry, mode: int, p: float, seed: torch.Tensor | None) -> torch.Tensor:
    """Run the pooling op through its torch.library op."""
    store_index = _store_index(mode, input)
    return torch.ops.tritonconv.max_pool2d(input, seed, *_geometry_args(geo), mode, p, store_index)[0]


def _plan(input: torch.Tensor, geo: PoolGeometry, mode: int, p: float) -> _plans.Plan:
    """The plan (see tritonconv._plans) of the pooling op on tensors like these."""
    store_index = _store_index(mode, input)
    seed = _plans.example_seed(input) if mode == DROPOUT.value else None
    return _plans.Plan(pool_forward(input, geo, mode, p, seed, store_index),
                       (*_geometry_args(geo), mode, p, store_index), _AUTOGRAD, first=True,
                       device=input.device)


# ---------------------------------------------------------------------------------------------------------
# Public ops.
# ---------------------------------------------------------------------------------------------------------

def check_window(kernel_size: int | Sequence[int], stride: int | Sequence[int] | None, padding: int | Sequence[int],
                 dilation: int | Sequence[int], ceil_mode: bool = False
                 ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Check a pooling window's arguments, as torch does, before any input is seen (the modules check
    them when built): (kernel, stride, padding, dilation) as pairs; stride None (or []) is kernel_size."""
    kernel = pair(kernel_size, "kernel_size", 1)
    stride_hw = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) \
        else pair(stride, "stride", 1)
    pad = pair(padding, "padding", 0)
    dilation_hw = pair(dilation, "dilation", 1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half the kernel size, kernel_size // 2 = "
                         f"{(kernel[0] // 2, kernel[1] // 2)}, got {padding!r}")
    return kernel, stride_hw, pad, dilation_hw


def pool_geometry(input: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None,
                  padding: int | Sequence[int], dilation: int | Sequence[int], ceil_mode: bool) -> PoolGeometry:
    """Check a max_pool2d call's arguments as torch.nn.functional.max_pool2d does, and describe it.

    Output size per axis: floor((size + 2p - d*(k-1) - 1) / s) + 1, or with ceil instead of floor in
    ceil_mode, less one if the last window would then start past the input and its left padding.
    """
    check_tensor(input, "input")
    kernel, stride_hw, pad, dilation_hw = check_window(kernel_size, stride, padding, dilation, ceil_mode)
    n, c, h, w = input.shape
    if c == 0:
        raise ValueError(f"input has no channels (shape {tuple(input.shape)}); torch's max_pool2d rejects that too: "
                         "pool a tensor with at least one channel")
    out = []
    for size, k, s, p, d in zip((h, w), kernel, stride_hw, pad, dilation_hw):
        o = output_size(size, k, s, 2 * p + (s - 1 if ceil_mode else 0), d)
        if ceil_mode and (o - 1) * s >= size + p:
            o -= 1
        out.append(o)
    if min(out) < 1:
        raise ValueError(f"the pooling window ({kernel[0]}x{kernel[1]}, dilation {dilation_hw}) does not fit "
                         f"the padded input ({h + 2 * pad[0]}x{w + 2 * pad[1]}): output size would be "
                         f"{out[0]}x{out[1]}; use a smaller kernel_size or dilation, or more padding")
    return PoolGeometry(n, c, h, w, kernel, stride_hw, pad, dilation_hw, out[0], out[1])


def tap_indices(taps: torch.Tensor, geo: PoolGeometry) -> torch.Tensor:
    """torch's max-pooling indices from the winning taps the forward stores: for output (oh, ow) won by
    tap t = kh*KW + kw, the flat index ih*W + iw of its input pixel in the (H, W) plane, as int64:
    ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw."""
    taps = taps.long()
    oh = torch.arange(geo.out_height, device=taps.device)[:, None]
    ow = torch.arange(geo.out_width, device=taps.device)
    kh, kw = taps // geo.kernel[1], taps % geo.kernel[1]
    ih = oh * geo.stride[0] - geo.pad[0] + kh * geo.dilation[0]
    iw = ow * geo.stride[1] - geo.pad[1] + kw * geo.dilation[1]
    return ih * geo.width + iw


@accepts_unbatched
def max_pool2d(input: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
               padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
               ceil_mode: bool = False,
               return_indices: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling with exactly the semantics of `torch.nn.functional.max_pool2d`:

        y[n, c, i, j] = max_{u, v} x[n, c, i*s_h - p_h + u*d_h, j*s_w - p_w + v*d_w]

    over the taps inside the input (padding counts as -inf). NaN propagates: a window holding a NaN gives
    NaN. The gradient goes to the unit F.max_pool2d picks: the first maximal tap in row-major window
    order, the last NaN. The backward stores one byte per output (the tap), not an int64 index.

    Args:
        input: (N, C, H, W) or unbatched (C, H, W), C >= 1; float32, float16 or bfloat16, NCHW or
            channels_last; the output keeps the format.
        kernel_size: int or (h, w), each >= 1 (a one-element sequence too, as for the other windows).
        stride: int or (h, w), each >= 1; None (or []) means kernel_size.
        padding: int or (h, w), at most half the kernel size.
        dilation: int or (h, w), each >= 1.
        ceil_mode: round the output size up; a window must still start inside the input or its left padding.
        return_indices: also return torch's indices (int64, the flat index ih*W + iw of each output's
            input pixel in its plane), computed from the stored taps.
    """
    if not isinstance(return_indices, bool):
        raise TypeError(f"return_indices must be a bool, got {type(return_indices).__name__}")
    window = (kernel_size, stride, padding, dilation, ceil_mode)
    if return_indices:
        # Not planned: the taps are always stored, and turned into torch's indices after the op.
        geo = pool_geometry(input, *window)
        y, taps = torch.ops.tritonconv.max_pool2d(input, None, *_geometry_args(geo), MAX.value, 0.0, True)
        return y, tap_indices(taps, geo)
    if _plans.eager(input):
        grad = _plans.needs_grad(input)
        key = ("max_pool2d", _plans.meta(input), *window, grad)
        return _plans.plan(key, lambda: _plan(input, pool_geometry(input, *window), MAX.value, 0.0))(
            grad, input, None)
    return _pool(input, pool_geometry(input, *window), MAX.value, 0.0, None)


@accepts_unbatched
def max_pool2d_dropout(input: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                       padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, p: float = 0.5,
                       training: bool = True, *, seed: int | None = None) -> torch.Tensor:
    """Max-pooling dropout (Wu & Gu, "Towards dropout training for convolutional neural networks", 2015).

    Training: every input unit x[n, c, h, w] is kept with probability 1 - p (p rounded to a multiple of
    2^-16: each unit draws 16 Philox bits), one draw per unit shared by all the windows that contain it, and

        y[n, c, i, j] = max of the kept units of the window, or 0 if none is kept.

    No rescaling; for the non-negative inputs after a ReLU this is the paper's max(x * mask). The gradient
    flows to the selected unit only (ties and NaN as `max_pool2d`).

    Eval (training=False): probabilistic weighted pooling, the exact expectation of the training output.
    With the window's n units sorted descending, v_1 >= ... >= v_n,

        y = sum_{i=1..n} (1 - p) p^(i-1) v_i,

    and the gradient of unit v_i is (1 - p) p^(i-1) (ties ranked by tap order).

    p = 0 (training or not) is exactly `max_pool2d`. Input and window arguments as `max_pool2d` (floor
    mode); p in [0, 1]; seed as `tritonconv.dropout`.
    """
    window = (kernel_size, stride, padding, dilation, False)
    if _plans.eager(input):
        check_seed(seed)
        grad = _plans.needs_grad(input)
        key = ("max_pool2d_dropout", _plans.meta(input), *window, p, training, grad)
        plan = _plans.plan(key, lambda: _plan(input, *_checked(input, window, p, training, seed)))
        return plan(grad, input, philox_seed(seed, input.device) if training and p != 0.0 else None)
    geo, mode, p = _checked(input, window, p, training, seed)
    return _pool(input, geo, mode, p, philox_seed(seed, input.device) if mode == DROPOUT.value else None)


def _checked(input: torch.Tensor, window: tuple, p: float, training: bool,
             seed: int | None) -> tuple[PoolGeometry, int, float]:
    """Check a max_pool2d_dropout call: its geometry, mode and p (0 for MAX). p = 0 is plain max pooling,
    eval is weighted pooling (WEIGHTED), training draws a mask (DROPOUT)."""
    geo = pool_geometry(input, *window)
    p = check_probability(p)
    check_seed(seed)
    if p == 0.0:
        return geo, MAX.value, 0.0
    return geo, DROPOUT.value if training else WEIGHTED.value, p
