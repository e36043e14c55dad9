"""depthwise_conv2d against F.conv2d(groups=C) in float64: forward, backward, layouts, dtypes, routing, bad input."""

import importlib

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import DEVICE, DTYPES, assert_close, dtype_layouts, op_sample, rand
from tritonconv import _plans, dispatch
from tritonconv._shared import conv_geometry, tap_major, unrolled_taps
from tritonconv.depthwise import forward_taps
from tritonconv.kernels.depthwise import depthwise_forward_kernel, depthwise_weight_grad_kernel

# (N, C, H, W, multiplier, (KH, KW), stride, padding, dilation): K = 1, 3, 5, 7, multipliers 1 and 2,
# stride 2, dilation 2, even and non-square kernels, "same"/"valid", and planes and channel counts that need
# several tiles of the interpreter's configuration. Each runs in every dtype and layout.
CASES = [
    (2, 5, 9, 8, 1, (1, 1), 1, 0, 1),
    (1, 6, 7, 10, 2, (3, 3), 1, 1, 1),
    (2, 3, 8, 9, 1, (5, 5), 2, 2, 1),
    (1, 4, 8, 11, 1, (7, 7), 1, "same", 2),
    (1, 20, 7, 19, 1, (2, 4), (1, 2), "valid", (2, 1)),
]
# A large kernel on a small map (169 taps, slow in the interpreter): two dtype/layout pairs.
LARGE = (1, 3, 8, 13, 1, (13, 13), 1, 6, 1)
PARAMS = [pytest.param(case, dtype, cl,
                       id=f"k{case[5][0]}x{case[5][1]}_m{case[4]}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for i, case in enumerate(CASES) for dtype, cl in dtype_layouts(i)] + [
    pytest.param(LARGE, torch.float32, False, id="k13x13-float32-nchw"),
    pytest.param(LARGE, torch.bfloat16, True, id="k13x13-bfloat16-nhwc"),
]


def _reference(x, w, b, stride, padding, dilation):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, x.shape[1])


@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_depthwise_forward_backward(case, dtype, channels_last):
    n, c, h, w_, mult, k, stride, padding, dilation = case
    x = rand(n, c, h, w_, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(c * mult, 1, *k, dtype=dtype, requires_grad=True)
    b = rand(c * mult, dtype=dtype, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, b, stride, padding, dilation)

    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = _reference(xr, wr, br, stride, padding, dilation)
    assert_close(y, ref, dtype, "forward")
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    assert_close(w.grad, wr.grad, dtype, "weight grad")
    assert_close(b.grad, br.grad, dtype, "bias grad")
    assert x.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# Every unrolled kernel size (1 to 7, both axes unrolled up to 25 live taps), a 7x5 and a 7x7 kernel whose
# rows unroll only in the forward's window (35 and 49 taps; 16-bit channels_last keeps the row loop), a 9x3
# one whose rows loop and a 9x9 one with both axes looping: (KH, KW), dtype, channels_last, and the
# (TAPS_H, TAPS_W) of `unrolled_taps` and of the forward (`forward_taps`). Channel counts that no block
# divides (17, 144 over the interpreter's 16) and multipliers 1 and 2 (subsampled: forward only, the
# backward kernels take no window).
F32, F16, BF16 = DTYPES
TAP_CASES = [((k, k), DTYPES[k % 3], k % 2 == 1, (k, k), (k, k)) for k in range(1, 6)] + [
    ((6, 3), F32, False, (6, 3), (6, 3)), ((7, 2), F16, True, (7, 2), (7, 2)), ((3, 7), BF16, False, (3, 7), (3, 7)),
    ((7, 5), BF16, False, (0, 5), (7, 5)), ((7, 7), F16, False, (0, 7), (7, 7)), ((7, 7), F32, True, (0, 7), (7, 7)),
    ((7, 7), F16, True, (0, 7), (0, 7)), ((9, 3), F32, False, (0, 3), (0, 3)), ((9, 9), F16, True, (0, 0), (0, 0))]


@pytest.mark.parametrize("i", range(len(TAP_CASES)),
                         ids=[f"k{k[0]}x{k[1]}-{str(d)[6:]}-{'nhwc' if cl else 'nchw'}" for k, d, cl, _, _ in TAP_CASES])
def test_unrolled_and_looping_taps(i):
    (kh, kw), dtype, cl, taps, window_taps = TAP_CASES[i]
    c, mult = ((17, 1), (144, 1), (17, 2))[i % 3]
    x = rand(1, c, kh + 2, kw + 3, dtype=dtype, channels_last=cl)
    w, b = rand(c * mult, 1, kh, kw, dtype=dtype), rand(c * mult, dtype=dtype)
    padding = (kh // 2, kw // 2)
    geo = conv_geometry(x, w, b, 1, padding, 1, c)
    assert tuple(unrolled_taps(geo).values()) == taps
    assert tuple(forward_taps(geo, dtype, cl).values()) == window_taps
    y = tc.depthwise_conv2d(x, w, b, 1, padding)
    assert_close(y, _reference(x, w, b, 1, padding, 1), dtype, f"{kh}x{kw} C={c} x{mult}")


@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, False), (torch.float32, True)], ids=["nchw", "nhwc"])
def test_unrolled_window_rows_on_strided_views(dtype, channels_last):
    """A 7x7 kernel's rows unrolled in the forward's window (`forward_taps`) on non-contiguous views of the
    input (every other channel) and the weight (every other column), multiplier 2, 17 channels, a plane of
    several interpreter tiles whose window rows and columns reach the padding on every side."""
    x = rand(2, 34, 9, 16, dtype=dtype, channels_last=channels_last)[:, ::2]
    w = rand(34, 1, 7, 14, dtype=dtype)[..., ::2]
    b = rand(34, dtype=dtype)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    assert not w.is_contiguous()
    assert tuple(forward_taps(conv_geometry(x, w, b, 1, 3, 1, 17), dtype, channels_last).values()) == (7, 7)
    y = tc.depthwise_conv2d(x, w, b, 1, 3)
    assert_close(y, _reference(x, w, b, 1, 3, 1), dtype, "7x7 window on strided views")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_looping_row_chunks_skip_taps_past_the_row(channels_last):
    """A 9-tap row loops in chunks of the window's OUT_W taps (2 in the interpreter): the last chunk's tap
    past the row must be skipped, not multiplied by a zero weight, or an infinite input column that only it
    reaches would turn a finite output into NaN. Every column is made infinite in turn."""
    x = rand(1, 3, 3, 12, channels_last=channels_last)
    w, b = rand(3, 1, 3, 9), rand(3)
    assert unrolled_taps(conv_geometry(x, w, b, 1, (1, 4), 1, 3))["TAPS_W"] == 0
    for col in range(x.shape[3]):
        xi = x.clone()
        xi[:, :, 1, col] = float("inf")
        y = tc.depthwise_conv2d(xi, w, b, 1, (1, 4))
        ref = _reference(xi, w, b, 1, (1, 4), 1)
        assert torch.equal(torch.isfinite(y), torch.isfinite(ref)), f"inf at column {col}"
        finite = torch.isfinite(ref)
        assert_close(y[finite], ref[finite], torch.float32, f"inf at column {col}")


# The input gradient's stride phases: (N, C, H, W, multiplier, (KH, KW), stride, padding, dilation). Stride
# and dilation sharing a factor (a phase no tap reaches, stored as zeros), stride 3, sizes that no stride
# divides, a 9x9 kernel whose taps loop at runtime (the branch over taps missing a phase) and a 7x5 one with
# looping rows and unrolled columns; through non-contiguous views of x and dy in alternating layouts/dtypes.
PHASE_CASES = [
    (1, 5, 9, 10, 1, (3, 3), 2, 2, 2),
    (2, 3, 11, 8, 2, (5, 5), 3, 1, 2),
    (1, 4, 12, 13, 1, (9, 9), 2, 4, 1),
    (1, 17, 9, 19, 2, (7, 5), (2, 3), (3, 2), (1, 2)),
]


@pytest.mark.parametrize("i", range(len(PHASE_CASES)))
def test_input_grad_stride_phases(i):
    n, c, h, w_, mult, k, stride, padding, dilation = PHASE_CASES[i]
    dtype, cl = DTYPES[i % 3], i % 2 == 1
    # Every other column of a wider tensor: no axis of x or dy is contiguous.
    x = rand(n, c, h, 2 * w_, dtype=dtype, channels_last=cl)[..., ::2].requires_grad_()
    w = rand(c * mult, 1, *k, dtype=dtype)
    y = tc.depthwise_conv2d(x, w, None, stride, padding, dilation)
    xr = x.detach().double().requires_grad_()
    ref = _reference(xr, w, None, stride, padding, dilation)
    dy = rand(*ref.shape[:3], 2 * ref.shape[3], dtype=dtype)[..., ::2]
    (dx,) = torch.autograd.grad(y, x, dy)
    ref.backward(dy.double())
    assert_close(dx, xr.grad, dtype, f"input grad {k} s{stride} d{dilation}")


# The input gradient at stride 1 with one filter per channel runs the forward kernel on dy with the kernel
# rotated by 180 degrees and padding (K-1)*d - p: (N, C, H, W, multiplier, (KH, KW), stride, padding,
# dilation) and the kernel expected. Kernels with KH != KW (a flip of one axis only, or a transpose, would
# show), padding under, over and beyond the kernel's span (the flipped padding negative), dilation 2 on either
# axis, odd sizes, one-tap rows; multiplier 2 and stride 2 gather per phase instead.
FLIP_CASES = [
    (1, 5, 9, 7, 1, (3, 5), 1, (0, 3), 1, "depthwise_input_grad"),
    (2, 3, 7, 11, 1, (5, 2), 1, (4, 1), (2, 1), "depthwise_input_grad"),
    (1, 17, 6, 9, 1, (1, 7), 1, (1, 2), (1, 2), "depthwise_input_grad"),
    (1, 4, 9, 8, 2, (3, 3), 1, 1, 1, "depthwise_input_grad_phases"),
    (1, 4, 9, 8, 1, (3, 3), 2, 1, 1, "depthwise_input_grad_phases"),
]


@pytest.mark.parametrize("i", range(len(FLIP_CASES)))
def test_input_grad_flips_the_kernel_at_stride_one(i):
    n, c, h, w_, mult, k, stride, padding, dilation, kernel = FLIP_CASES[i]
    dtype, cl = DTYPES[i % 3], i % 2 == 0
    x = rand(n, c, h, w_, dtype=dtype, channels_last=cl, requires_grad=True)
    w = rand(c * mult, 1, *k, dtype=dtype)
    y = tc.depthwise_conv2d(x, w, None, stride, padding, dilation)
    xr = x.detach().double().requires_grad_()
    ref = _reference(xr, w, None, stride, padding, dilation)
    # dy in the other layout than x's, every other column of a wider tensor: dx still takes x's layout.
    dy = rand(*ref.shape[:3], 2 * ref.shape[3], dtype=dtype, channels_last=not cl)[..., ::2]
    with dispatch.recording() as decisions:
        (dx,) = torch.autograd.grad(y, x, dy)
    assert {d.problem.kernel for d in decisions} == {kernel}
    ref.backward(dy.double())
    assert_close(dx, xr.grad, dtype, f"input grad {k} p{padding} d{dilation} x{mult} s{stride}")
    assert dx.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("n,c", [(3, 5), (1, 130)], ids=["samples", "channel-blocks"])
def test_flat_grid_past_the_axis_limit(monkeypatch, n, c):
    """The forward kernel (and the stride-1 input gradient, which runs it) on one flat grid axis, as for
    more samples or channel blocks than grid axes 1 and 2 hold (65535; lowered here to 1, which 3 samples,
    then 130 channels in blocks of at most 64, exceed)."""
    monkeypatch.setattr(importlib.import_module("tritonconv.depthwise"), "_GRID_AXIS_LIMIT", 1)
    x = rand(n, c, 6, 7, dtype=torch.float16, channels_last=True, requires_grad=True)
    w = rand(c, 1, 3, 3, dtype=torch.float16)
    b = rand(c, dtype=torch.float16)
    grids = []
    run = depthwise_forward_kernel.run
    monkeypatch.setattr(depthwise_forward_kernel, "run",
                        lambda *args, grid, **kwargs: grids.append(grid) or run(*args, grid=grid, **kwargs))
    with dispatch.recording():
        y = tc.depthwise_conv2d(x, w, b, 1, 1, 1)
        dy = rand(*y.shape, dtype=torch.float16)
        (dx,) = torch.autograd.grad(y, x, dy)
    assert len(grids) == 2 and all(len(grid) == 1 for grid in grids)
    xr = x.detach().double().requires_grad_()
    ref = _reference(xr, w, b, 1, 1, 1)
    assert_close(y, ref, torch.float16, "forward")
    ref.backward(dy.double())
    assert_close(dx, xr.grad, torch.float16, "input grad")


def test_weight_grad_steps_across_tile_rows_and_images():
    """The weight gradient walks its share of the N * OH output rows, BLOCK_H at a time, carrying a row
    into the next image when it passes the last: two images of 17 rows (not a multiple of the interpreter's
    8-row step), split between two programs, so the first program's steps cross into the second image
    mid-step and the second starts mid-image."""
    x = rand(2, 3, 17, 17, requires_grad=True)
    w = rand(3, 1, 3, 3, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, None, 1, 1)
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = _reference(xr, wr, None, 1, 1, 1)
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")


# The weight gradient's paths: (N, C, H, W, multiplier, (KH, KW), stride, padding, dilation). Kernels whose
# taps are one group (1x1 to 5x5) and ones taken in groups of one row by 4 columns in the interpreter (7x5,
# 9x9: groups that end past the kernel); rows of an odd number of outputs, where a thread's last output
# (of 2 in the interpreter) lies past the edge; C = 17, 144 and 240 (not multiples of the block),
# multipliers 1 and 2, stride 2, dilation 2; rows of 35 outputs, more than one program's columns (the
# column tiles' partial sums add like the splits'); through non-contiguous views of x and dy in alternating
# layouts and dtypes.
WEIGHT_GRAD_CASES = [
    (2, 17, 7, 9, 2, (3, 3), 1, 1, 1),
    (1, 144, 5, 6, 1, (3, 3), 2, 1, 1),
    (1, 240, 3, 5, 1, (5, 5), 1, 2, 1),
    (1, 5, 9, 11, 2, (1, 1), 2, 0, 1),
    (1, 3, 9, 10, 1, (7, 5), (1, 2), (3, 2), (1, 2)),
    (1, 4, 6, 9, 1, (9, 9), 1, 4, 1),
    (1, 3, 3, 35, 1, (3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("i", range(len(WEIGHT_GRAD_CASES)),
                         ids=[f"c{case[1]}_k{case[5][0]}x{case[5][1]}" for case in WEIGHT_GRAD_CASES])
def test_weight_grad_paths(i):
    n, c, h, w_, mult, k, stride, padding, dilation = WEIGHT_GRAD_CASES[i]
    dtype, cl = DTYPES[i % 3], i % 2 == 0
    # Every other column of a wider tensor: no axis of x or dy is contiguous.
    x = rand(n, c, h, 2 * w_, dtype=dtype, channels_last=cl)[..., ::2]
    w = rand(c * mult, 1, *k, dtype=dtype, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, None, stride, padding, dilation)
    wr = w.detach().double().requires_grad_()
    ref = _reference(x.detach(), wr, None, stride, padding, dilation)
    dy = rand(*ref.shape[:3], 2 * ref.shape[3], dtype=dtype, channels_last=not cl)[..., ::2]
    (dw,) = torch.autograd.grad(y, w, dy)
    ref.backward(dy.double())
    assert_close(dw, wr.grad, dtype, f"weight grad {k} s{stride} d{dilation}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_weight_grad_ignores_pixels_no_output_reads(channels_last):
    """3x3 at stride 2 on 9 x 8: the 4 x 3 outputs read input rows 0-8 and columns 0-6, never column 7.
    The interpreter's threads take 2 outputs of a row, so the last thread's second output (column 3) lies
    past the edge, and its window reaches column 7: an inf there must not turn its zero dy into NaN."""
    x = rand(1, 3, 9, 8, channels_last=channels_last)
    x[:, :, :, 7] = float("inf")
    w = rand(3, 1, 3, 3, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, None, 2, 0)
    wr = w.detach().double().requires_grad_()
    ref = _reference(x, wr, None, 2, 0, 1)
    dy = rand(*ref.shape)
    (dw,) = torch.autograd.grad(y, w, dy)
    ref.backward(dy.double())
    assert torch.isfinite(wr.grad).all()
    assert_close(dw, wr.grad, torch.float32, "weight grad")


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
def test_weight_grad_split_is_deterministic_when_asked(monkeypatch, deterministic):
    """The weight gradient's split reduction (two programs per tap and channel block in the interpreter,
    more on a GPU): under torch.use_deterministic_algorithms each split stores its partial sums, added in a
    fixed order (the same bits on every run), otherwise the splits add with atomics. The flag is read per
    call, so it flips on a plan made before (the launches' ATOMIC switch is recorded)."""
    launches = []
    run = depthwise_weight_grad_kernel.run
    monkeypatch.setattr(depthwise_weight_grad_kernel, "run",
                        lambda *a, **k: launches.append(k["ATOMIC"]) or run(*a, **k))
    _plans.clear()
    x = rand(2, 5, 17, 17, dtype=torch.bfloat16, channels_last=True, requires_grad=True)
    w = rand(10, 1, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, None, 1, 1)  # the plan, made with deterministic algorithms on (conftest)
    dy = rand(*y.shape, dtype=torch.bfloat16)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    grads = [torch.autograd.grad(tc.depthwise_conv2d(x, w, None, 1, 1), w, dy)[0] for _ in range(2)]
    _plans.clear()  # the plans hold the recording launch
    wr = w.detach().double().requires_grad_()
    _reference(x.detach(), wr, None, 1, 1, 1).backward(dy.double())
    assert_close(grads[0], wr.grad, torch.bfloat16, "weight grad")
    assert launches == [not deterministic] * 2
    if deterministic:
        assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_weights_changed_in_place_between_calls(op):
    """The kernels read a tap-major copy of the depthwise weights. A change through `.data` (manual SGD, EMA
    teachers) bypasses the version counter, so a copy kept per version would go stale: the result must
    follow every kind of in-place change."""
    x, w, pw = rand(2, 5, 6, 7), rand(10, 1, 3, 3), rand(4, 10, 1, 1)
    if op == "depthwise":
        run, reference = (lambda: tc.depthwise_conv2d(x, w, None, 1, 1)), (lambda: _reference(x, w, None, 1, 1, 1))
    else:
        run = lambda: tc.depthwise_separable_conv2d(x, w, pw, padding=1)  # noqa: E731
        reference = lambda: F.conv2d(_reference(x, w, None, 1, 1, 1), pw.double())  # noqa: E731
    assert torch.equal(tap_major(w).reshape(9, 10), w.reshape(10, 9).t())
    padded = tap_major(w, torch.float64, 16)  # rows of 16, the last one too
    assert padded.untyped_storage().nbytes() == 9 * 16 * 8
    assert torch.equal(padded.as_strided((9, 10), (16, 1)), w.double().reshape(10, 9).t())
    assert_close(run(), reference(), torch.float32, "first weights")
    w.mul_(-2.0)
    assert_close(run(), reference(), torch.float32, "weights changed in place")
    w.data[3, 0, 1, 2] = 7.0
    assert_close(run(), reference(), torch.float32, "one weight changed through .data")
    w.data.copy_(rand(10, 1, 3, 3))
    assert_close(run(), reference(), torch.float32, "weights copied through .data")


@pytest.mark.parametrize("dilation,padding", [(12, 12), (24, 24)])
def test_large_dilation_skips_padding_taps(dilation, padding):
    """ASPP-like rates on a small map: most taps read only padding and are cut; gradients must not change."""
    x = rand(1, 3, 9, 9, requires_grad=True)
    w = rand(3, 1, 3, 3, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, None, 1, padding, dilation)
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = _reference(xr, wr, None, 1, padding, dilation)
    assert_close(y, ref, torch.float32, "forward")
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")


def test_batch_zero_and_no_bias():
    x = rand(0, 3, 5, 5, requires_grad=True)
    w = rand(6, 1, 3, 3, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, padding=1)
    assert y.shape == (0, 6, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_indexing_beyond_int32(monkeypatch):
    """A view whose second image starts 2^31 elements into its storage: forward reads it, the weight
    gradient reads it again."""
    big = 2**31 + 64
    c, h, w_ = 2, 5, 4
    # Without the NaN fill, the 4 GiB storage stays unwritten (and unallocated) except for the two images.
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)
    storage = torch.empty(big + c * h * w_, dtype=torch.float16, device=DEVICE)
    x = storage.as_strided((2, c, h, w_), (big, h * w_, w_, 1))
    x.copy_(torch.randn(2, c, h, w_, dtype=torch.float64).to(torch.float16))
    w = rand(2 * c, 1, 3, 3, dtype=torch.float16, requires_grad=True)
    y = tc.depthwise_conv2d(x, w, padding=1)
    wr = w.detach().double().requires_grad_()
    ref = _reference(x, wr, None, 1, 1, 1)
    assert_close(y, ref, torch.float16, "far image")
    dy = rand(*ref.shape, dtype=torch.float16)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(w.grad, wr.grad, torch.float16, "weight grad over the far image")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("c,mult,k,groups,family", [
    (4, 1, (3, 3), 4, "depthwise"),
    (3, 2, (5, 3), 3, "depthwise"),
    (1, 5, (3, 3), 1, "depthwise"),   # one input channel: groups == C even without groups
    (4, 1, (3, 3), 2, "implicit_gemm"),
])
def test_conv2d_routes_depthwise(c, mult, k, groups, family, channels_last):
    """conv2d sends groups == in_channels to the depthwise kernels and computes the same result."""
    x = rand(2, c, 7, 6, channels_last=channels_last, requires_grad=True)
    w = rand(c * mult, c // groups, *k, requires_grad=True)
    with dispatch.recording() as decisions:
        y = tc.conv2d(x, w, None, 1, 1, 1, groups)
        y.backward(torch.ones_like(y))
    # split_sum adds a split weight gradient's partial sums under the tests' deterministic algorithms.
    assert {d.family for d in decisions if d.problem.kernel != "split_sum"} == {family}
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = F.conv2d(xr, wr, None, 1, 1, 1, groups)
    ref.backward(torch.ones_like(ref))
    assert_close(y, ref, torch.float32, "forward")
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")


def _bad(**overrides):
    args = dict(input=rand(1, 4, 6, 6), weight=rand(8, 1, 3, 3), bias=None, stride=1, padding=0, dilation=1)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,match", [
    (dict(weight=rand(8, 2, 3, 3)), ValueError, r"weight must have shape \(C \* multiplier, 1, KH, KW\)"),
    (dict(weight=rand(6, 1, 3, 3)), ValueError, "C = 4 input channels"),
    (dict(weight=rand(2, 1, 3, 3)), ValueError, "multiplier >= 1"),
    (dict(weight=rand(8, 1, 3)), ValueError, r"weight must be \(N, C, H, W\)"),
    (dict(weight=rand(8, 1, 3, 3, dtype=torch.float16)), TypeError, "weight has dtype"),
    (dict(weight="w"), TypeError, "weight must be a torch.Tensor"),
    (dict(input=rand(1, 0, 6, 6)), ValueError, "at least one channel"),
    (dict(input=rand(4, 6)), ValueError, r"input must be \(N, C, H, W\)"),
    (dict(bias=rand(4)), ValueError, "bias must have shape"),
    (dict(bias=rand(8, dtype=torch.bfloat16)), TypeError, "bias has dtype"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding="same", stride=2), ValueError, "same"),
    (dict(weight=rand(8, 1, 9, 9)), ValueError, "padded input"),
])
def test_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        tc.depthwise_conv2d(**_bad(**overrides))


def test_autocast_runs_in_the_lower_precision():
    x, w, b = rand(1, 3, 6, 5), rand(6, 1, 3, 3), rand(6)
    with torch.autocast(x.device.type, dtype=torch.float16):
        y = tc.depthwise_conv2d(x, w, b, padding=1)
    assert y.dtype == torch.float16
    assert_close(y, _reference(x, w, b, 1, 1, 1), torch.float16, "autocast")


@op_sample("depthwise_conv2d")
def _sample() -> torch.Tensor:
    x = rand(2, 4, 6, 6, requires_grad=True)
    # Multiplier 1, then 2: both input gradient kernels (the flipped forward, the stride-phase gather).
    y = tc.depthwise_conv2d(x, rand(4, 1, 3, 3, requires_grad=True), rand(4, requires_grad=True), padding=1)
    return tc.depthwise_conv2d(y, rand(8, 1, 3, 3, requires_grad=True), padding=1)
