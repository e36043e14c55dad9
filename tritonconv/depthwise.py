"""depthwise_conv2d: configurations and launchers for the direct depthwise kernels, torch.library ops with
autograd, public op."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import torch

from tritonconv import _plans, dispatch, heuristics
from tritonconv._checks import (accepts_unbatched, autocast, channels_last, check_tensor, empty_like_layout,
                               interpreting)
from tritonconv._shared import (MAX_UNROLLED_KERNEL, MAX_UNROLLED_TAPS, ConvGeometry, check_depthwise_weight, conv_geometry, epilogue_plan, geometry_args,
                                register_epilogue_op, register_gradient_ops, split_k_partials, tap_major,
                                unrolled_taps)
from tritonconv.heuristics import cdiv, next_power_of_2
from tritonconv.kernels.depthwise import (depthwise_forward_kernel, depthwise_input_grad_kernel,
                                          depthwise_weight_grad_kernel)

# ---------------------------------------------------------------------------------------------------------
# Configurations (see tritonconv.dispatch). A depthwise Problem has m = N * rows * cols pixels of the plane
# the kernel tiles (the output plane, or the input plane for the input gradient), n = channels, k = taps,
# and extra = (("height", rows), ("width", cols)).
# ---------------------------------------------------------------------------------------------------------

# The order in which tile axes are widened, each up to its cap, while the tile stays within the element
# budget. channels_last takes the channel block first (contiguous, so the loads vectorise; see
# `_channel_block`), then columns and rows: 4096 elements are 4 pixels x 8 channels per thread of 4 warps,
# so each thread's tap weights (one vector load per tap) serve several pixels. NCHW widens columns, then
# rows, so each program covers a patch of the plane. The interpreter pays per program and per operation,
# not per element, so its one tile covers a whole small test plane (but not the test cases chosen to need
# several tiles).
_CHANNELS_LAST_TILES = (4096, (("BLOCK_C", 64), ("BLOCK_W", 16), ("BLOCK_H", 8)))
_NCHW_TILES = (1024, (("BLOCK_W", 64), ("BLOCK_H", 16), ("BLOCK_C", 16)))
_INTERPRETER_TILES = (2048, (("BLOCK_C", 16), ("BLOCK_W", 16), ("BLOCK_H", 8)))
# The weight gradient keeps one float32 accumulator per tap of its group for each of a thread's tile
# elements, and slides a window of OUT_W outputs along each row (`depthwise_weight_grad_kernel`). Kernels of
# up to _WEIGHT_GRAD_WHOLE taps take every tap in one group (x and dy read once); larger ones take groups of
# one kernel row by _WEIGHT_GRAD_CHUNK columns (chunks of 16 columns, or two rows of 8, predicted no faster
# for replknet 31x31). A thread holds 4 elements (channels) for groups of up to _WEIGHT_GRAD_SMALL_GROUP taps
# (3x3, the chunks), 2 for larger ones (5x5: 4 spill on sm_90; 16-bit 7x7: 1 makes its loads scalar, 34.4 ->
# 24.1 us predicted for convnext bf16 with 2) but 1 for float32 beyond _WEIGHT_GRAD_MEDIUM_GROUP taps (7x7
# with 2 spills on sm_90); 8 for 3x3 gained under 5% at 200 registers.
_WEIGHT_GRAD_WHOLE = MAX_UNROLLED_TAPS**2
_WEIGHT_GRAD_CHUNK = 8
_WEIGHT_GRAD_SMALL_GROUP = 16
_WEIGHT_GRAD_MEDIUM_GROUP = 25
_WEIGHT_GRAD_OUT_W = 4
def _channel_block(channels: int, cap: int) -> int:
    """The power-of-two channel block up to `cap` that leaves the fewest idle lanes over `channels`
    (the widest among equals): 16 for C = 144 or 240 (no idle lane) rather than 64 (a quarter idle)."""
    return heuristics.fewest_idle(channels, [b for b in (8, 16, 32, 64, 128) if b <= max(cap, 8)])


def _tile(problem: dispatch.Problem, interpreter: bool, elements: int | None = None) -> dict[str, int]:
    """BLOCK_H, BLOCK_W, BLOCK_C for a plane of problem.extra's height x width and problem.n channels, in
    the layout's element budget (or `elements` on a GPU)."""
    extra = dict(problem.extra)
    extents = {"BLOCK_H": extra["height"], "BLOCK_W": extra["width"], "BLOCK_C": problem.n}
    if interpreter:
        budget, order = _INTERPRETER_TILES
    else:
        budget, order = _CHANNELS_LAST_TILES if problem.channels_last else _NCHW_TILES
        budget = elements or budget
    blocks = {}
    for name, cap in order:
        if name == "BLOCK_C" and problem.channels_last and not interpreter:
            blocks[name] = _channel_block(problem.n, min(cap, budget))
        else:
            blocks[name] = heuristics.pow2_clamp(extents[name], 1, min(cap, budget))
        budget //= blocks[name]
    return blocks


def _warps(blocks: dict[str, int]) -> int:
    """At least 8 float32 accumulators per thread: 4 warps for a tile of 1024 or more, fewer for small ones."""
    return heuristics.pow2_clamp(blocks["BLOCK_H"] * blocks["BLOCK_W"] * blocks["BLOCK_C"] // 256, 1, 4)


def _tile_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Input gradient by stride phases: one tile of the plane per program, no reduction; channels_last
    tiles of a quarter of the forward's for kernels of 10 to MAX_UNROLLED_TAPS^2 taps (their unrolled
    taps spill 16 float32 per thread on sm_90; larger kernels loop over both axes and do not)."""
    unrolled = 9 < problem.k <= MAX_UNROLLED_TAPS**2
    blocks = _tile(problem, interpreter, 1024 if problem.channels_last and unrolled else None)
    return dispatch.Config.of(num_warps=_warps(blocks), num_stages=1, **blocks)


# The forward's sliding window (OUT_W outputs per thread along a row) on a GPU: 4 outputs per thread, in
# tiles of 512 column groups: channels_last, one 16-byte vector of channels per thread and output (8
# 16-bit elements on 2 warps, 4 float32 on 4 warps: 8 float32 spill a 5x5 kernel's window on sm_90); NCHW,
# whose loads along a row are scalar, loads each input column once for every output and tap that reads it
# (on 2 warps: the 3x3 separable probe's 256-pixel tiles hold 4 pixels per thread, which share each tap's
# weight loads and addresses; 7x7 kernels take a quarter of the tile, 2 pixels per thread: more would
# spill, and the 14x14 maps of ConvNeXt give few programs).
# Where the kernel's rows unroll too, at stride 1 (problem.extra's "window" == _WINDOW_2D), each thread also
# takes _WINDOW_OUT_H output rows, so each input row's window serves the taps of both: NCHW and float32 only
# (16-bit channels_last threads hold 8 channels, a 16-byte vector: 2 x 4 outputs of 8 channels spill a 5x5
# window on sm_90, and 4 channels per thread, on 4 warps, load more than the shared rows save).
# Rows too wide to unroll ("window" == _CHUNKS) take their taps in runtime chunks of OUT_W: 8 outputs per
# thread, on 2 warps in every dtype (channels_last: 8 channels per thread), so a chunk's 2 * 8 - 1 window
# columns serve 64 multiply-adds per thread and tap (replknet 31x31 bf16 predicted 238 us on 4 warps, 4
# channels per thread, 203 on 2; 215 with chunks of 7 taps, 393 of 6).
_WINDOW, _CHUNKS, _WINDOW_2D = 1, 2, 3
# _window_width widens rows to 7 outputs where 7 divides them: predicted for 16-bit channels_last
# efficientnet 5x5 bf16 54.8 -> 46.7 us, convnext 7x7 21.0 -> 16.6 us; NCHW rows that loop keep 4 (the
# convnext 14x14 7x7 NCHW probe went 5.4 -> 6.0 us).
_WINDOW_OUT_W = 4
_WINDOW_OUT_H = 2
_WINDOW_TILE = 512
_CHUNK_OUT_W = 8


def _window_width(problem: dispatch.Problem) -> int:
    """Outputs per thread along the forward's rows at stride 1: the widest of 7, 6, 5 that divides the
    row (no idle column in the last tile, and a longer window to share its columns: 7 for every plane of
    MobileNet, EfficientNet and ConvNeXt), else _WINDOW_OUT_W, also at stride 2 or more (7 outputs at
    stride 2 span a 3x3 kernel's 15 columns: 16-bit channels_last spills on sm_90)."""
    extra = dict(problem.extra)
    widths = (7, 6, 5) if extra.get("stride", 1) == 1 else ()
    return next((w for w in widths if extra["width"] % w == 0), _WINDOW_OUT_W)


def _window_groups(problem: dispatch.Problem, out_h: int, out_w: int) -> dispatch.Problem:
    """`problem` with its plane's rows counted in groups of `out_h` and its columns in groups of `out_w`
    (what the forward's BLOCK_H and BLOCK_W tile)."""
    extra = dict(problem.extra)
    extra["height"] = cdiv(extra["height"], out_h)
    extra["width"] = cdiv(extra["width"], out_w)
    return dataclasses.replace(problem, extra=tuple(extra.items()))


def _forward_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Forward: one tile of the plane per program. The launcher marks problem.extra "window" when the
    kernel's columns have dilation 1 and either unroll with at least `stride` taps (then every input column
    of the window serves some tap) or loop (in chunks of OUT_W taps), and _WINDOW_2D when its rows also
    unroll, with stride and dilation 1; the sliding window then takes _WINDOW_OUT_W outputs
    per thread along a row, and _WINDOW_OUT_H rows for _WINDOW_2D (2 and 2 in the interpreter, so the
    tests run it)."""
    window = dict(problem.extra).get("window", 0)
    out_w = (1 if not window else 2 if interpreter else _CHUNK_OUT_W if window == _CHUNKS
             else _window_width(problem) if window == _WINDOW_2D or problem.channels_last else _WINDOW_OUT_W)
    out_h = (1 if window != _WINDOW_2D else 2 if interpreter
             else _WINDOW_OUT_H if problem.dtype.itemsize == 4 or not problem.channels_last else 1)
    # Rows unrolled past MAX_UNROLLED_KERNEL taps (`forward_taps`) hold more loads in flight: half the
    # tile channels_last, with 8 bytes of channels per thread and output, a quarter NCHW (each spilled on
    # sm_90 at the smaller kernels' tile). Channels_last rows of such kernels that loop (16-bit 7x7,
    # stride 2) wait a memory round trip per kernel row: half the tile on half the warps, the same 16 bytes
    # per thread, so that more programs overlap those waits.
    big = window == _WINDOW_2D and problem.k > MAX_UNROLLED_KERNEL
    looping_rows = window == _WINDOW and problem.k > MAX_UNROLLED_KERNEL and problem.channels_last
    tile = _WINDOW_TILE // (4 if big and not problem.channels_last else 2 if big or looping_rows else 1)
    groups = _window_groups(problem, out_h, out_w)
    blocks = _tile(groups, interpreter, tile if out_w > 1 else None)
    warps = _warps(blocks)
    if out_w > 1 and not interpreter:
        # NCHW: 2 warps for the quarter tile of unrolled 7-row kernels, else 4 (on 2, the 3x3 window at
        # 14x14 spills 52-268 bytes under triton 3.6, the GPU machine's, though not under 3.9).
        nchw_warps = 2 if big else 4
        warps = 2 if window == _CHUNKS else nchw_warps if not problem.channels_last else heuristics.pow2_clamp(
            tile * problem.dtype.itemsize // (32 * (8 if big else 16)), 1, 4)
        if problem.channels_last:
            # The row block that leaves the fewest idle rows (4 for 28 rows, not 8: 3.5 tiles), on fewer
            # warps in proportion, so each thread keeps its outputs.
            rows = dict(groups.extra)["height"]
            block_h = heuristics.fewest_idle(rows, [b for b in (1, 2, 4, 8, 16) if b <= blocks["BLOCK_H"]])
            warps = max(1, warps * block_h // blocks["BLOCK_H"])
            blocks["BLOCK_H"] = block_h
    return dispatch.Config.of(num_warps=warps, num_stages=1, OUT_W=out_w, OUT_H=out_h, **blocks)


def _forward_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """The tile space, with 1, 2, 4 or `_window_width` outputs per thread along a row where the window
    applies (1, 2, 4, 8 for rows taken in chunks), on 1 or 2 rows where rows unroll too."""
    window = dict(problem.extra).get("window", 0)
    widths = (1, 2, 4, 8) if window == _CHUNKS else sorted({1, 2, 4, _window_width(problem)}) if window else (1,)
    heights = (1, 2) if window == _WINDOW_2D else (1,)
    return [dispatch.Config.of(cfg.num_warps, cfg.num_stages, OUT_W=out_w, OUT_H=out_h, **dict(cfg.meta))
            for out_w in widths for out_h in heights
            for cfg in _tile_space(_window_groups(problem, out_h if out_w > 1 else 1, out_w))
            if out_w > 1 or out_h == 1]


def _weight_grad_taps(problem: dispatch.Problem, interpreter: bool) -> tuple[int, int]:
    """TAPS_H x TAPS_W, the weight gradient's tap group: the whole kernel up to _WEIGHT_GRAD_WHOLE taps
    (the interpreter: 25), else one kernel row in chunks of _WEIGHT_GRAD_CHUNK columns (the interpreter: 4,
    so the tests run chunks that end past the kernel)."""
    kh, kw = dict(problem.extra)["kernel_h"], dict(problem.extra)["kernel_w"]
    if kh * kw <= (MAX_UNROLLED_KERNEL if interpreter else _WEIGHT_GRAD_WHOLE):
        return kh, kw
    return 1, min(kw, 4 if interpreter else _WEIGHT_GRAD_CHUNK)


def _weight_grad_out_w(problem: dispatch.Problem, interpreter: bool) -> int:
    """OUT_W, the outputs per thread along a row: 2 in the interpreter; on a GPU the widest of 7, 6, 5, 4
    (at stride 2 or more 4, 3: 7 outputs at stride 2 span 15 columns of a 3x3 kernel and spill; float32
    groups of more than _WEIGHT_GRAD_MEDIUM_GROUP taps 4: 7 spill a 7x7 on sm_80) that divides the output
    row (a thread's outputs then all exist or none does: EVEN_W), else 4."""
    if interpreter:
        return 2
    extra = dict(problem.extra)
    taps_h, taps_w = _weight_grad_taps(problem, interpreter)
    wide = extra["stride_w"] == 1 and (taps_h * taps_w <= _WEIGHT_GRAD_MEDIUM_GROUP or problem.dtype.itemsize < 4)
    widths = (7, 6, 5, 4) if wide else (4, 3)
    return next((w for w in widths if extra["width"] % w == 0), _WEIGHT_GRAD_OUT_W)


def _weight_grad_blocks(problem: dispatch.Problem, interpreter: bool, out_w: int, elements: int) -> dict[str, int]:
    """The tile of `elements` thread slots (each OUT_W outputs of a row) over output rows, column groups and
    channels, at most the output's height in rows (a step's rows then wrap into the next image at most
    once)."""
    blocks = _tile(_window_groups(problem, 1, out_w), interpreter, elements)
    height = dict(problem.extra)["height"]
    blocks["BLOCK_H"] = min(blocks["BLOCK_H"], 1 << (height.bit_length() - 1))
    return blocks


def _weight_grad_config(problem: dispatch.Problem, interpreter: bool) -> dispatch.Config:
    """Weight gradient: the tile is one reduction step of 4 warps, each thread OUT_W outputs by the elements
    its accumulators allow (see _WEIGHT_GRAD_SMALL_GROUP), and SPLIT_K programs share each (tap group,
    channel block, column tile) until the GPU holds 4 * TARGET_PROGRAMS of them (8 per SM: two waves or
    more of the few that the accumulators' registers let in; several programs per SM hide each one's load
    latency, later waves even out their finishing times), each keeping at least 4 steps of work. The
    interpreter pays per program and per operation, so its tiles are large; it splits in two whenever
    there are two steps, so the tests exercise the split paths (atomic and deterministic)."""
    taps_h, taps_w = _weight_grad_taps(problem, interpreter)
    out_w = _weight_grad_out_w(problem, interpreter)
    taps = taps_h * taps_w
    per_thread = (4 if taps <= _WEIGHT_GRAD_SMALL_GROUP else
                  1 if taps > _WEIGHT_GRAD_MEDIUM_GROUP and problem.dtype.itemsize == 4 else 2)
    blocks = _weight_grad_blocks(problem, interpreter, out_w, 128 * per_thread)
    config = dispatch.Config.of(num_warps=4, num_stages=1, SPLIT_K=1, TAPS_H=taps_h, TAPS_W=taps_w, OUT_W=out_w,
                               **blocks)
    steps = _weight_grad_steps(config, problem)
    if interpreter:
        split = 2 if steps > 1 else 1
    else:
        split = max(1, min(4 * heuristics.TARGET_PROGRAMS // _weight_grad_programs(config, problem), steps // 4))
    return dispatch.Config.of(num_warps=_warps(blocks) if interpreter else 4, num_stages=1, SPLIT_K=split,
                              TAPS_H=taps_h, TAPS_W=taps_w, OUT_W=out_w, **blocks)


def _tile_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """Tiles of 512 to 4096 elements in the layout's shape, none over twice the plane's extent."""
    extra = dict(problem.extra)
    if problem.channels_last:
        axes = {"BLOCK_C": (16, 32, 64, 128), "BLOCK_W": (2, 4, 8, 16), "BLOCK_H": (2, 4, 8)}
    else:
        axes = {"BLOCK_W": (16, 32, 64), "BLOCK_H": (4, 8, 16), "BLOCK_C": (1, 2, 4)}
    extents = {"BLOCK_H": extra["height"], "BLOCK_W": extra["width"], "BLOCK_C": problem.n}
    fits = {name: tuple(v for v in values if v <= max(values[0], 2 * next_power_of_2(extents[name])))
            for name, values in axes.items()}
    return [cfg for cfg in dispatch.product_space(num_warps=(4, 8), num_stages=(1,), **fits)
            if 512 <= cfg["BLOCK_H"] * cfg["BLOCK_W"] * cfg["BLOCK_C"] <= 4096]


def _weight_grad_space(problem: dispatch.Problem) -> list[dispatch.Config]:
    """The heuristic's tap group, 1, 2, 4 or its own outputs per thread along a row, tiles of 512 to 4096
    thread slots of at most the output's height and split 1 to 64 ways, with at most twice the accumulators
    per thread of the heuristic's small groups (2 * 4 * _WEIGHT_GRAD_SMALL_GROUP)."""
    taps_h, taps_w = _weight_grad_taps(problem, False)
    height = dict(problem.extra)["height"]
    return [dispatch.Config.of(cfg.num_warps, cfg.num_stages, SPLIT_K=split, TAPS_H=taps_h, TAPS_W=taps_w,
                               OUT_W=out_w, **dict(cfg.meta))
            for out_w in sorted({1, 2, 4, _weight_grad_out_w(problem, False)})
            for cfg in _tile_space(_window_groups(problem, 1, out_w)) for split in (1, 4, 16, 64)
            if cfg["BLOCK_H"] <= height and taps_h * taps_w * cfg["BLOCK_H"] * cfg["BLOCK_W"] * cfg["BLOCK_C"]
            <= 2 * 4 * _WEIGHT_GRAD_SMALL_GROUP * 32 * cfg.num_warps]


def _plane_tiles(blocks: Mapping[str, int] | dispatch.Config, problem: dispatch.Problem) -> int:
    """(BLOCK_H, BLOCK_W) tiles of the N planes of `problem`: per channel block, the programs of the
    forward and input gradient (one program covers a tile of every stride phase)."""
    extra = dict(problem.extra)
    return _images(problem) * cdiv(extra["height"], blocks["BLOCK_H"] * blocks.get("OUT_H", 1)) * cdiv(
        extra["width"], blocks["BLOCK_W"] * blocks.get("OUT_W", 1))


def _images(problem: dispatch.Problem) -> int:
    """The samples of a forward or input-gradient Problem (problem.m counts their pixels of every phase)."""
    extra = dict(problem.extra)
    return problem.m // max(1, extra["height"] * extra["width"] * extra.get("phases", 1))


def _tile_programs(config: dispatch.Config, problem: dispatch.Problem) -> int:
    """Forward and input gradient: one program per (BLOCK_H, BLOCK_W, BLOCK_C) tile."""
    return _plane_tiles(config, problem) * cdiv(problem.n, config["BLOCK_C"])


# The most programs along grid axes 1 and 2 (CUDA's limit).
_GRID_AXIS_LIMIT = 65535


def _forward_grid(config: dispatch.Config, problem: dispatch.Problem) -> tuple[int, ...]:
    """The forward kernel's grid: (plane tiles of a sample, channel blocks, samples) when the last two fit
    grid axes 1 and 2, so that a program reads its tile, channel block and sample off its ids without
    dividing (GRID_NC); else one flat axis of `_tile_programs`."""
    images, blocks = _images(problem), cdiv(problem.n, config["BLOCK_C"])
    if blocks <= _GRID_AXIS_LIMIT and images <= _GRID_AXIS_LIMIT:
        return (_plane_tiles(config, problem) // images, blocks, images)
    return (_tile_programs(config, problem),)


def _weight_grad_steps(config: dispatch.Config, problem: dispatch.Problem) -> int:
    """Weight gradient: the reduction steps, BLOCK_H of the N * OH output rows each."""
    return cdiv(problem.m // dict(problem.extra)["width"], config["BLOCK_H"])


def _weight_grad_programs(config: dispatch.Config, problem: dispatch.Problem) -> int:
    """Weight gradient: one program per (tap group, channel block, column tile, reduction split)."""
    kh, kw = dict(problem.extra)["kernel_h"], dict(problem.extra)["kernel_w"]
    return (cdiv(kh, config["TAPS_H"]) * cdiv(kw, config["TAPS_W"]) * cdiv(problem.n, config["BLOCK_C"])
            * cdiv(dict(problem.extra)["width"], config["BLOCK_W"] * config["OUT_W"]) * config["SPLIT_K"])


def _tap_trips(problem: dispatch.Problem, config: dispatch.Config, args: Mapping[str, object]) -> tuple[float, ...]:
    """Forward (and the input gradient that runs it): the live kh and kw taps of the axes not unrolled. The
    phase gather loops over the MULT filters of a channel, then over those taps, once per stride phase (an
    unrolled copy each); with a stride, the taps that do not reach a phase are branched over, which these
    counts ignore."""
    taps = tuple(args[end] - args[start] for start, end, unrolled in (("kh_start", "kh_end", "TAPS_H"),
                                                                      ("kw_start", "kw_end", "TAPS_W"))
                 if not args.get(unrolled))
    if problem.kernel != "depthwise_input_grad_phases":
        # A looping row with the sliding window takes its taps in chunks of OUT_W.
        chunk = config.get("OUT_W", 1) if len(taps) == 2 else 1
        return taps[:1] + tuple(cdiv(t, chunk) for t in taps[1:])
    return (args["MULT"], *taps) * (args["stride_h"] * args["stride_w"])


def _weight_grad_trips(problem: dispatch.Problem, config: dispatch.Config,
                       args: Mapping[str, object]) -> tuple[float, ...]:
    """One split's share of the reduction steps (the taps are unrolled)."""
    return (cdiv(cdiv(args["N"] * args["OH"], config["BLOCK_H"]), config["SPLIT_K"]),)


dispatch.register("depthwise_forward", "depthwise", depthwise_forward_kernel, _forward_config, _forward_space,
                  programs=_tile_programs, trips=_tap_trips)
# The input gradient at stride 1 runs the forward kernel on dy (`depthwise_input_grad`); other strides and
# channel multipliers gather per stride phase.
dispatch.register("depthwise_input_grad", "depthwise", depthwise_forward_kernel, _forward_config, _forward_space,
                  programs=_tile_programs, trips=_tap_trips)
dispatch.register("depthwise_input_grad_phases", "depthwise", depthwise_input_grad_kernel, _tile_config,
                  _tile_space, programs=_tile_programs, trips=_tap_trips)
dispatch.register("depthwise_weight_grad", "depthwise", depthwise_weight_grad_kernel, _weight_grad_config,
                  _weight_grad_space, programs=_weight_grad_programs, steps=_weight_grad_steps,
                  trips=_weight_grad_trips)


def _problem(kernel: str, geo: ConvGeometry, channels: int, plane: tuple[int, int], x: torch.Tensor,
             cl: bool, phases: int = 1, window: int = 0, stride: int = 1) -> dispatch.Problem:
    """The Problem of a launch tiling `plane` (`phases` of them per image: the input gradient's stride
    phases; `window`: the forward may slide a window along rows, see `_forward_config`, whose column
    stride is `stride`)."""
    extra = (("height", plane[0]), ("width", plane[1])) + ((("phases", phases),) if phases > 1 else ()) + (
        (("window", window),) if window else ()) + ((("stride", stride),) if window and stride > 1 else ())
    return dispatch.Problem(kernel, m=geo.batch * phases * plane[0] * plane[1], n=channels,
                            k=geo.kernel[0] * geo.kernel[1], dtype=x.dtype, channels_last=cl, extra=extra)


# ---------------------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------------------

def forward_taps(geo: ConvGeometry, dtype: torch.dtype, cl: bool) -> dict[str, int]:
    """The forward's TAPS_H and TAPS_W with the sliding window (OUT_W > 1): `unrolled_taps`, except that
    at stride and dilation 1 the rows of a kernel of up to MAX_UNROLLED_TAPS live rows unroll whatever its
    size (7x7: 49 taps), as the 2-D window holds one input row's columns at a time, not every tap's loads;
    so no runtime row loop waits a memory round trip per kernel row. The window's config takes smaller
    tiles for such kernels (`_forward_config`). 16-bit channels_last keeps the row loop: unrolled, the
    float16 7x7 window spills on sm_90 at every tile that is not slower than the loop, and the bfloat16 one
    is predicted slower than the loop and spills under triton 3.6."""
    taps = unrolled_taps(geo)
    rows = geo.live_taps(0)[1] - geo.live_taps(0)[0]
    if (taps["TAPS_W"] and geo.stride[0] == 1 and geo.dilation == (1, 1) and rows <= MAX_UNROLLED_TAPS
            and not (cl and dtype.itemsize == 2)):
        taps["TAPS_H"] = rows
    return taps


@dispatch.on_inputs_device
def depthwise_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                      activation: str = "none", store_pre: bool = False, flip: bool = False,
                      like: torch.Tensor | None = None) -> Callable:
    """The launch of y = activation(depthwise(x, w) + bias) on tensors like these: run(x, w, bias) -> (y, z),
    y in the memory format torch's convolution would give (or `like`'s), z = depthwise(x, w) + bias (the
    activation's input) when `store_pre`, else an empty tensor. `flip`: with w's kernel rotated by 180
    degrees, the input gradient at stride 1 (`depthwise_input_grad`, whose Problem it then is)."""
    cl = channels_last(x, w) if like is None else channels_last(like)
    f, plane = geo.out_channels, (geo.out_height, geo.out_width)
    y = empty_like_layout((geo.batch, f, *plane), cl, x.dtype, "meta")
    alloc = _plans.allocator(y, x.device)
    if y.numel() == 0:
        return lambda x, w, bias: (alloc(), alloc() if store_pre else x.new_empty(0))
    taps, window_taps = unrolled_taps(geo), forward_taps(geo, x.dtype, cl)
    window = (0 if geo.dilation[1] != 1 else _CHUNKS if taps["TAPS_W"] == 0 else 0 if taps["TAPS_W"] < geo.stride[1]
              else _WINDOW_2D if geo.dilation[0] == 1 and geo.stride[0] == 1 and window_taps["TAPS_H"] else _WINDOW)
    problem = _problem("depthwise_input_grad" if flip else "depthwise_forward", geo, f, plane, x, cl,
                       window=window, stride=geo.stride[1])
    args = (geo.height, geo.width, *plane, f, f // geo.in_channels, *geo.stride, *geo.pad, *geo.dilation,
            *geo.live_taps(0), *geo.live_taps(1), *x.stride())

    def prepare(cfg: dispatch.Config) -> Callable:
        # Weights for whole channel blocks: the window loads them unmasked (`tap_major`'s columns).
        columns = cdiv(f, dict(cfg.meta)["BLOCK_C"]) * dict(cfg.meta)["BLOCK_C"]
        # Flipped, tap (kh, kw) reads the packed row of tap (KH-1-kh, KW-1-kw): the rows backwards from
        # the last, through negative tap strides (no flipped copy).
        taps_sign = -1 if flip else 1
        all_args = (*args, 1, taps_sign * geo.kernel[1] * columns, taps_sign * columns, *y.stride(),
                    bias.stride(0) if bias is not None else 0)
        grid = _forward_grid(cfg, problem)
        kernel = _plans.launcher(depthwise_forward_kernel, grid, GRID_NC=len(grid) == 3,
                                 HAS_BIAS=bias is not None, ACTIVATION=activation, STORE_PRE=store_pre,
                                 BF16_BITS=x.dtype == torch.bfloat16 and not interpreting(),
                                 **(window_taps if cfg["OUT_W"] > 1 else taps), **cfg.launch_kwargs())

        def run(x, w, bias):
            y = alloc()
            z = alloc() if store_pre else x.new_empty(0)
            packed = tap_major(w, torch.float32, columns)  # converted once here, not per tap and thread
            # Flipped, the kernel starts at the last tap's row, (KH-1, KW-1), and walks back (above).
            first = packed[-1:, -1:] if flip else packed
            kernel(x, first, packed if bias is None else bias, y, z if store_pre else y, *all_args)
            return y, z
        return run

    return dispatch.runner(problem, prepare, x, w, bias)


@dispatch.on_inputs_device
def depthwise_input_grad(dy: torch.Tensor, w: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dx of the depthwise convolution `geo` on tensors like these: run(dy, w) -> dx, in the
    memory format of `like` (the input).

    At stride 1 with one filter per channel, dx is the depthwise convolution of dy with the kernel rotated
    by 180 degrees: dx[ih] = sum_kh dy[ih + ph - kh*dh] * w[kh] = sum_kh' dy[ih - ph' + kh'*dh] * w[KH-1-kh']
    with ph' = (KH-1)*dh - ph (negative where the padding exceeds the kernel's span), the same dilation, and
    dy's plane as the input: the forward kernel's sliding window computes it. Other strides and channel
    multipliers (which sum the MULT filters of a channel) gather per stride phase
    (`depthwise_input_grad_kernel`). The one difference: a non-finite weight turns dx into NaN also where
    its tap reads only dy's padding (0 * inf, as the forward does on x's padding), where the phase gather
    and torch's CPU reference add nothing."""
    cl = channels_last(like)
    c, plane = geo.in_channels, (geo.height, geo.width)
    if geo.stride == (1, 1) and geo.out_channels == c:
        flipped = dataclasses.replace(
            geo, height=geo.out_height, width=geo.out_width, out_height=geo.height, out_width=geo.width,
            pad=tuple((k - 1) * d - p for k, d, p in zip(geo.kernel, geo.dilation, geo.pad)))
        run = depthwise_forward(dy, w, None, flipped, flip=True, like=like)
        return lambda dy, w: run(dy, w, None)[0]
    dx = empty_like_layout((geo.batch, c, *plane), cl, dy.dtype, "meta")
    alloc = _plans.allocator(dx, dy.device)
    if dx.numel() == 0:
        return lambda dy, w: alloc()
    # The kernel tiles the grid of stride phases (each program covers every phase of its tile).
    (sh, sw), (kh0, kh1), (kw0, kw1) = geo.stride, geo.live_taps(0), geo.live_taps(1)
    problem = _problem("depthwise_input_grad_phases", geo, c, (cdiv(plane[0], sh), cdiv(plane[1], sw)), dy, cl,
                       phases=sh * sw)
    args = (*plane, geo.out_height, geo.out_width, c, geo.out_channels // c, kh1, kw1, *dy.stride(), 1,
            geo.kernel[1] * geo.out_channels, geo.out_channels, *dx.stride())
    geometry = dict(zip(("stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w", "kh_start", "kw_start"),
                        (*geo.stride, *geo.pad, *geo.dilation, kh0, kw0)))

    def prepare(cfg: dispatch.Config) -> Callable:
        kernel = _plans.launcher(depthwise_input_grad_kernel, (dispatch.programs(cfg, problem),), **geometry,
                                 **unrolled_taps(geo), **cfg.launch_kwargs())

        def run(dy, w):
            dx = alloc()
            kernel(dy, tap_major(w), dx, *args)
            return dx
        return run

    return dispatch.runner(problem, prepare, dy, w)


@dispatch.on_inputs_device
def depthwise_weight_grad(x: torch.Tensor, dy: torch.Tensor, geo: ConvGeometry, like: torch.Tensor) -> Callable:
    """The launch of dL/dw of the depthwise convolution `geo` on tensors like these: run(x, dy) -> dw,
    accumulated in float32 and returned in the dtype and layout of `like` (the weight)."""
    f, (kh, kw) = geo.out_channels, geo.kernel
    plane = (geo.out_height, geo.out_width)
    fmt = torch.channels_last if channels_last(like) else torch.contiguous_format
    shape = (f, 1, kh, kw)  # the kernel's (F, KH * KW) result, contiguous
    if geo.batch == 0:
        return lambda x, dy: torch.zeros(shape, dtype=like.dtype, device=x.device).contiguous(memory_format=fmt)
    # The kernel's size rides in the Problem's extra: the tap group and the accumulators per thread follow it.
    problem = _problem("depthwise_weight_grad", geo, f, plane, x, channels_last(x))
    problem = dataclasses.replace(problem, extra=problem.extra + (("kernel_h", kh), ("kernel_w", kw),
                                                                    ("stride_w", geo.stride[1])))
    args = (geo.batch, geo.height, geo.width, *plane, f, f // geo.in_channels, kh, kw, geo.stride[0], *geo.pad,
            geo.dilation[0], *x.stride(), *dy.stride())

    def prepare(cfg: dispatch.Config) -> Callable:
        # Each split and column tile sums part of the reduction. Deterministic algorithms: each stores its
        # partial sums, added in a fixed order; else atomics.
        parts = cfg["SPLIT_K"] * cdiv(plane[1], cfg["BLOCK_W"] * cfg["OUT_W"])
        alloc, total, workspace = split_k_partials(shape, parts, like.dtype, x.device, fmt)
        kernel = _plans.launcher(depthwise_weight_grad_kernel, (dispatch.programs(cfg, problem),),
                                 stride_w=geo.stride[1], dil_w=geo.dilation[1], EVEN_W=plane[1] % cfg["OUT_W"] == 0,
                                 ATOMIC=parts > 1 and not workspace,
                                 BF16_BITS=x.dtype == torch.bfloat16 and not interpreting(), **cfg.launch_kwargs())

        def run(x, dy):
            dw = alloc()
            kernel(x, dy, dw, *args)
            return total(dw)
        return run

    return dispatch.runner(problem, prepare, x, dy)


# ---------------------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile, with fake implementations for shapes), autograd, public op.
# tritonconv::depthwise_conv2d is a conv + bias + activation op returning (y, z), like
# tritonconv::pointwise_conv2d; the public op uses no activation, the separable backward does.
# ---------------------------------------------------------------------------------------------------------

register_gradient_ops("depthwise_conv2d", depthwise_input_grad, depthwise_weight_grad)
register_epilogue_op("depthwise_conv2d", depthwise_forward, gradients="depthwise_conv2d")


def _checked(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int | Sequence[int],
             padding: int | Sequence[int] | str, dilation: int | Sequence[int]) -> ConvGeometry:
    """Check a depthwise_conv2d call; its geometry."""
    check_tensor(input, "input")
    check_depthwise_weight(weight, "weight", input)
    return conv_geometry(input, weight, bias, stride, padding, dilation, input.shape[1])


@accepts_unbatched
def depthwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                     dilation: int | Sequence[int] = 1) -> torch.Tensor:
    """Depthwise 2-D convolution: `torch.nn.functional.conv2d(input, weight, bias, stride, padding,
    dilation, groups=C)`.

    y[n, f, i, j] = b[f] + sum_{u, v} x[n, f // m, i*s_h - p_h + u*d_h, j*s_w - p_w + v*d_w] * w[f, 0, u, v]

    for output channel f in [0, C*m), with channel multiplier m = weight.shape[0] / C and x reading as 0
    outside the input. Computed directly in float32 registers (no matrix product: each channel is filtered
    on its own), for any kernel size. Autograd computes input and weight gradients with our own kernels.

    Args:
        input: (N, C, H, W), NCHW or channels_last; the output takes the same memory format; or (C, H, W).
        weight: (C * m, 1, KH, KW), multiplier m >= 1.
        bias: optional (C * m,).
        stride, dilation: int or (h, w) pair, each >= 1.
        padding: int or (h, w) pair, "valid" or "same" (stride 1 only), as in `tritonconv.conv2d`.
    """
    eager = _plans.eager(input, weight, bias)
    input, weight, bias = autocast(input, weight, bias)
    if eager:
        key = ("depthwise_conv2d", _plans.meta(input), _plans.meta(weight), _plans.meta(bias), stride, padding,
               dilation)
        plan = _plans.plan(key, lambda: epilogue_plan("depthwise_conv2d", input, weight, bias, _checked(
            input, weight, bias, stride, padding, dilation), "none", False))
        return plan(_plans.needs_grad(input, weight, bias), input, weight, bias)
    geo = _checked(input, weight, bias, stride, padding, dilation)
    return torch.ops.tritonconv.depthwise_conv2d(input, weight, bias, *geometry_args(geo), "none", False)[0]
