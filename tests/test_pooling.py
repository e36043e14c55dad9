"""max_pool2d against F.max_pool2d (exact forward, NaN, ties, ceil_mode, gradients) and max-pooling
dropout: shared per-unit draws, the float64 composition with the observed mask, Monte Carlo against the
weighted-pooling eval, its own float64 reference, dtypes, layouts, bad input."""

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from tritonconv import dispatch
from tritonconv.kernels.pooling import max_pool2d_backward_kernel, max_pool2d_forward_kernel
from conftest import DTYPES, assert_close, op_sample, rand

# (N, C, H, W, kernel_size, stride, padding, dilation, ceil_mode): VGG's 2x2/2, ResNet's 3x3/2 pad 1,
# AlexNet's 3x3/2 in ceil mode, dilated 3x3 and 2x2 (the unrolled windows: 2x2 and 3x3), non-square
# kernels, a 5x5 (the runtime walk), strides, paddings and dilations, odd sizes.
CASES = [
    (2, 5, 9, 11, 2, None, 0, 1, False),
    (1, 6, 11, 10, 3, 2, 1, 1, False),
    (2, 3, 13, 12, 3, 2, 0, 1, True),
    (1, 3, 12, 11, 3, 1, 1, (2, 3), True),
    (1, 5, 9, 10, 2, 3, 1, 2, False),
    (1, 4, 9, 10, (2, 3), (1, 2), (1, 1), (2, 1), True),
    (2, 3, 10, 9, (3, 1), (2, 1), (1, 0), (1, 3), False),
    (1, 7, 8, 9, 5, 3, 2, 1, True),
]


def _check_layout(t: torch.Tensor, channels_last: bool) -> None:
    assert t.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _pool_and_grad(x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our max_pool2d and F.max_pool2d in float64 on x, forward and backward with one random dy."""
    x = x.detach().requires_grad_()
    y = tc.max_pool2d(x, *args, **kwargs)
    xr = x.detach().double().requires_grad_()
    ref = F.max_pool2d(xr, *args, **kwargs)
    dy = rand(*ref.shape, dtype=x.dtype)
    y.backward(dy)
    ref.backward(dy.double())
    return y, ref, x.grad, xr.grad


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_max_pool2d_forward_backward(case, dtype, channels_last):
    n, c, h, w, kernel, stride, padding, dilation, ceil_mode = case
    x = rand(n, c, h, w, dtype=dtype, channels_last=channels_last)
    y, ref, dx, dx_ref = _pool_and_grad(x, kernel, stride, padding, dilation, ceil_mode)
    assert y.shape == ref.shape and y.dtype == dtype
    assert torch.equal(y.double(), ref), "max pooling is exact"
    _check_layout(y, channels_last)
    assert_close(dx, dx_ref, dtype, "input grad")
    _check_layout(dx, channels_last)


# (kernel, stride, padding): every stride against kernels 2..4, overlapping (k3 s1, k3 s2) and gapped (k2 s3)
# windows, so that the backward's candidate windows per pixel (((k-1)*d)//s + 1 per axis) take 1, 2 and 3.
STRIDE_CASES = [(2, 1, 0), (2, 2, 1), (2, 3, 0), (3, 1, 1), (3, 2, 1), (3, 3, 0), (4, 3, 2)]


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("geometry", STRIDE_CASES, ids=[f"k{k}s{s}p{p}" for k, s, p in STRIDE_CASES])
def test_max_pool2d_every_stride_and_ceil_mode(geometry, ceil_mode):
    """Forward exact and backward against torch for each stride, with the map sizes chosen so that ceil_mode
    adds a partial last window; NCHW and channels_last alternate by stride."""
    kernel, stride, padding = geometry
    x = rand(1, 3, 10, 11, channels_last=stride % 2 == 0)
    y, ref, dx, dx_ref = _pool_and_grad(x, kernel, stride, padding, 1, ceil_mode)
    assert torch.equal(y.double(), ref)
    assert_close(dx, dx_ref, torch.float32, "input grad")


# Stride-1 windows in NCHW, whose backward loads each row of a cell's windows as two runs of 4 columns
# (kernels.pooling `_chunk`) where OW is a multiple of 4 and the rows of dy and the taps are contiguous:
# (kernel, padding, W, dy's row stride) with OW = 12 (runs at both edges), then OW = 11 and a dy whose rows
# are strided, which take the one-window-a-load path.
ROW_RUN_CASES = [(3, 1, 12, None, True), (3, 0, 14, 16, True), (2, 1, 11, None, True), (2, 0, 13, 20, True),
                 (3, 1, 11, None, False), (3, 1, 12, 2, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ROW_RUN_CASES, ids=[f"k{c[0]}p{c[1]}w{c[2]}s{c[3]}" for c in ROW_RUN_CASES])
def test_max_pool2d_backward_row_runs(monkeypatch, case, dtype):
    """The backward's gradient against torch whether or not it loads rows as runs, and which path ran:
    dy is a view of a wider tensor (a row stride that is a multiple of 4 but not OW) or of every other
    column (row stride 2, column stride 2: no runs)."""
    kernel, padding, w, row_stride, runs = case
    x = rand(2, 3, 9, w, dtype=dtype, requires_grad=True)
    y = tc.max_pool2d(x, kernel, 1, padding)
    oh, ow = y.shape[-2:]
    if row_stride == 2:
        dy = rand(2, 3, oh, 2 * ow, dtype=dtype)[..., ::2]
    elif row_stride:
        dy = rand(2, 3, oh, row_stride, dtype=dtype)[..., :ow]
    else:
        dy = rand(2, 3, oh, ow, dtype=dtype)
    seen = []
    run = max_pool2d_backward_kernel.run
    monkeypatch.setattr(max_pool2d_backward_kernel, "run",
                        lambda *args, **kwargs: seen.append(kwargs["ROW_RUNS"]) or run(*args, **kwargs))
    with dispatch.recording():
        (dx,) = torch.autograd.grad(y, x, dy)
    assert seen == [runs]
    xr = x.detach().double().requires_grad_()
    ref = F.max_pool2d(xr, kernel, 1, padding)
    ref.backward(dy.double())
    assert_close(dx, xr.grad, dtype, "input grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_max_pool2d_nan_and_ties(dtype):
    """NaN propagates and takes the gradient (the last NaN of a window, as torch); among equal maxima the
    first tap takes it. Small integers make ties common."""
    x = torch.randint(0, 3, (2, 3, 9, 8)).to(dtype)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = x[1, 2, 4, 0] = float("nan")
    y, ref, dx, dx_ref = _pool_and_grad(x, 3, 1, 1)
    assert torch.equal(y.double().isnan(), ref.isnan())
    assert torch.equal(y.double().nan_to_num(), ref.nan_to_num())
    assert_close(dx, dx_ref, dtype, "input grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_max_pool2d_all_minus_inf_window_routes_to_its_first_tap(dtype):
    """A window of -inf only: torch outputs -inf and sends the gradient to its first tap inside the input
    (padding is not a tap); so must we, in the dtype the taps are compared in."""
    x = rand(1, 2, 7, 8, dtype=dtype)
    x[:, :, :4, :5] = float("-inf")
    y, ref, dx, dx_ref = _pool_and_grad(x, 3, 2, 1)
    assert torch.equal(y.double(), ref)
    assert_close(dx, dx_ref, dtype, "input grad")


def test_max_pool2d_big_window_and_defaults():
    """A 16x17 window (272 taps) records its taps in int32 instead of a byte; stride=[] means kernel_size."""
    x = rand(1, 3, 17, 18)
    y, ref, dx, dx_ref = _pool_and_grad(x, (16, 17), 1)
    assert torch.equal(y.double(), ref)
    assert_close(dx, dx_ref, torch.float32, "input grad")
    assert torch.equal(tc.max_pool2d(x, 2, []), F.max_pool2d(x, 2))


def test_max_pool2d_saves_one_byte_per_output():
    x = rand(2, 3, 8, 8, requires_grad=True)
    y = tc.max_pool2d(x, 3, 2, 1)
    (saved,) = y.grad_fn.saved_tensors
    assert saved.dtype == torch.uint8 and saved.shape == y.shape


# ---------------------------------------------------------------------------------------------------------
# Max-pooling dropout.
# ---------------------------------------------------------------------------------------------------------

# (kernel_size, stride, padding, dilation): non-overlapping, overlapping with padding, dilated, non-square
# with an odd stride (both parities of window origins), stride 1, stride 3.
GEOMETRIES = [(2, None, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), ((3, 2), (1, 3), (1, 0), 1), (2, 1, 0, 1), (3, 3, 1, 1)]


def _kept_units(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The mask of kept input units: with a 1x1 window every output is its unit or 0 (x is nonzero)."""
    return tc.max_pool2d_dropout(x, 1, p=p, seed=seed) != 0


def _masked_max_pool(x: torch.Tensor, keep: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """The composition in float64: max over the kept units, 0 where a window keeps none."""
    pooled = F.max_pool2d(torch.where(keep, x, float("-inf")), kernel, stride, padding, dilation)
    return torch.where(torch.isinf(pooled), 0.0, pooled)


def _weighted_pool(x: torch.Tensor, kernel, stride, padding, dilation, p: float) -> torch.Tensor:
    """Probabilistic weighted pooling in float64: sum_i (1-p) p^(i-1) v_i over each window's units sorted
    descending (a stable sort: equal values keep tap order); padding sorts last and weighs nothing."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (kh, kw) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    n, c, h, w = x.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    units = F.unfold(F.pad(x, (pw, pw, ph, ph), value=float("-inf")), (kh, kw), (dh, dw), 0, (sh, sw))
    ranked, _ = torch.sort(units.view(n, c, kh * kw, oh * ow), dim=2, descending=True, stable=True)
    weights = (1 - p) * p ** torch.arange(kh * kw, dtype=torch.float64)[:, None]
    return torch.where(torch.isinf(ranked), 0.0, ranked * weights).sum(dim=2).view(n, c, oh, ow)


def test_pool_dropout_unit_drop_rate():
    p = 0.3
    keep = _kept_units(rand(2, 40, 9, 10).abs() + 1, p, seed=5)
    dropped = int((~keep).sum())
    assert abs(dropped - keep.numel() * p) <= 4.5 * (keep.numel() * p * (1 - p)) ** 0.5


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[f"geo{i}" for i in range(len(GEOMETRIES))])
def test_pool_dropout_shares_one_draw_per_unit(geometry):
    """Every window sees the same draw of a unit (whatever the window geometry): the output is the
    composition with the 1x1-window mask, exactly; the gradient reaches the selected unit only."""
    p, seed = 0.5, 11
    x = rand(2, 5, 11, 10, requires_grad=True)
    keep = _kept_units(x.detach(), p, seed)
    y = tc.max_pool2d_dropout(x, *geometry, p=p, seed=seed)
    xr = x.detach().double().requires_grad_()
    ref = _masked_max_pool(xr, keep, *geometry)
    assert torch.equal(y.double(), ref)
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")


# The per-lane cell paths (2x2 and 3x3 windows at strides 1-3, undilated, square padding): forward lanes of
# 8x8, 4x4 and 2x4 outputs drawing their patch once, backward lanes of 2x2 or 3x3 pixels.
CELL_GEOMETRIES = [(3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 1), (2, 2, 1), (2, 3, 0)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geometry", CELL_GEOMETRIES, ids=[f"k{k}s{s}p{p}" for k, s, p in CELL_GEOMETRIES])
def test_pool_dropout_cells_share_each_units_draw(geometry, channels_last):
    """Overlapping windows on maps several cells wide with partial last cells: every window sees the
    1x1-window mask's draw of each unit (units in the halo between lanes' patches too), exactly; the
    gradient, with dy a non-contiguous view (its strides differ from the saved taps'), reaches the
    selected unit only."""
    p, seed = 0.5, 13
    x = rand(2, 3, 19, 42, channels_last=channels_last)[:, :, :, ::2].requires_grad_()   # 19 x 21, W stride 2
    keep = _kept_units(x.detach(), p, seed)
    y = tc.max_pool2d_dropout(x, *geometry, p=p, seed=seed)
    xr = x.detach().double().requires_grad_()
    ref = _masked_max_pool(xr, keep, *geometry, 1)
    assert torch.equal(y.double(), ref)
    dy = rand(*ref.shape[:2], ref.shape[3], ref.shape[2]).transpose(2, 3)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kernel, width", [(3, 17), (3, 18), (2, 17)])
def test_pool_dropout_cells_last_lane_halo(kernel, width, dtype, channels_last):
    """Stride 1, no padding, W one or two past a multiple of 8: the last row of output cells reaches input
    columns that no cell owns, so the grid takes one more lane a row (`window_cell_lanes`), whose draws its
    left neighbour gathers; the output is exact against the masked float64 composition."""
    p, seed = 0.5, 29
    x = rand(2, 3, 9, width, dtype=dtype, channels_last=channels_last)
    keep = _kept_units(x, p, seed)
    y = tc.max_pool2d_dropout(x, kernel, 1, 0, p=p, seed=seed)
    assert torch.equal(y.double(), _masked_max_pool(x.double(), keep, kernel, 1, 0, 1))


# NCHW cells whose block rows load as vector runs (CELL_RUNS: W and the row stride multiples of 4), and the
# views that do not: (kernel, stride, padding, W, x's row stride or None, runs).
CELL_RUN_CASES = [(3, 1, 1, 20, None, True), (3, 2, 1, 20, 24, True), (3, 1, 1, 20, 22, False),
                  (3, 2, 1, 19, None, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CELL_RUN_CASES, ids=[f"k{c[0]}s{c[1]}w{c[3]}r{c[4]}" for c in CELL_RUN_CASES])
def test_pool_dropout_cell_runs(monkeypatch, case, dtype):
    """The cells' output, exact against the float64 composition with the observed mask, whether or not
    they load block rows as runs, and which path ran (x contiguous, a view of a wider tensor whose row
    stride is or is not a multiple of 4, an odd W)."""
    kernel, stride, padding, w, row_stride, runs = case
    p, seed = 0.3, 5
    x = rand(2, 3, 13, row_stride or w, dtype=dtype)[..., :w]
    keep = _kept_units(x, p, seed)
    seen = []
    run = max_pool2d_forward_kernel.run
    monkeypatch.setattr(max_pool2d_forward_kernel, "run",
                        lambda *args, **kwargs: seen.append(kwargs["CELL_RUNS"]) or run(*args, **kwargs))
    with dispatch.recording():
        y = tc.max_pool2d_dropout(x, kernel, stride, padding, p=p, seed=seed)
    assert seen == [runs]
    assert torch.equal(y.double(), _masked_max_pool(x.double(), keep, kernel, stride, padding, 1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", [(3, 1, 1), (2, 1, 0), (3, 2, 1), (2, 3, 0)],
                         ids=["k3s1p1", "k2s1p0", "k3s2p1", "k2s3p0"])
def test_pool_dropout_keyed_cells_nan_zeros_infinities(geometry, dtype, channels_last):
    """16-bit cells pick a window's winner by an integer max of per-unit keys: on small integers
    (many ties), +0 and -0 (equal: the first tap wins), NaNs (the last wins) and infinities, the output is
    F.max_pool2d of the kept units (0 where none is kept; a kept -inf is taken), the gradient reaches the
    unit torch's max picks."""
    p, seed = 0.4, 17
    x = torch.randint(-2, 3, (2, 3, 11, 19)).to(dtype)
    x[x == 0] = torch.where(torch.rand(int((x == 0).sum())) < 0.5, 0.0, -0.0).to(dtype)
    x[0, 0, 2, 3] = x[0, 0, 3, 3] = x[1, 2, 5, 9] = float("nan")
    x[0, 1, 4, 4:7] = float("inf")
    x[1, 0, 6:9, 2:6] = float("-inf")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    keep = _kept_units(torch.ones_like(x.detach()), p, seed)
    y = tc.max_pool2d_dropout(x, *geometry, p=p, seed=seed)
    xr = x.detach().double().requires_grad_()
    pooled = F.max_pool2d(torch.where(keep, xr, float("-inf")), *geometry)
    any_kept = F.max_pool2d(keep.double(), *geometry) > 0
    ref = torch.where(any_kept, pooled, 0.0)
    assert torch.equal(y.double().isnan(), ref.isnan())
    assert torch.equal(y.double().nan_to_num(), ref.nan_to_num())
    # Gradients where every window's winner is a finite or NaN unit (a window of dropped and kept -inf
    # units sends torch's gradient to its first -inf, maybe a dropped one).
    finite = ~F.max_pool2d(torch.where(keep, xr.detach(), float("-inf")), *geometry).isinf()
    dy = rand(*ref.shape, dtype=dtype) * finite
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geometry", [(3, 1, 1), (2, 1, 0), (3, 2, 1)], ids=["k3s1p1", "k2s1p0", "k3s2p1"])
def test_pool_dropout_keyed_cells_empty_windows(geometry, channels_last):
    """16-bit cells at a high drop rate, many windows keeping no unit: those output +0.0 and send
    no gradient (their empty key decodes as tap KK), every other window's gradient reaches its winner."""
    p, seed = 0.85, 23
    x = rand(2, 3, 13, 18, dtype=torch.float16, channels_last=channels_last).requires_grad_()
    keep = _kept_units(x.detach(), p, seed)
    y = tc.max_pool2d_dropout(x, *geometry, p=p, seed=seed)
    xr = x.detach().double().requires_grad_()
    ref = _masked_max_pool(xr, keep, *geometry, 1)
    empty = F.max_pool2d(keep.double(), *geometry) == 0
    assert empty.sum() > 20 and torch.equal(y.double(), ref) and not y[empty].signbit().any()
    dy = rand(*ref.shape, dtype=torch.float16)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float16, "input grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pool_dropout_pairs_path_matches_window_walk(channels_last):
    """2x2 stride-2 windows take the pair path (one Philox call per output pair), every other window the
    window walk: both see the draws of the 1x1-window mask, on odd sizes (a last pair with one output,
    a last input column in no window) and a non-contiguous view."""
    p, seed = 0.5, 7
    x = rand(2, 5, 11, 22, channels_last=channels_last)[:, :, :, ::2]   # 11 x 11, W stride 2
    keep = _kept_units(x, p, seed)
    y = tc.max_pool2d_dropout(x, 2, p=p, seed=seed)
    assert torch.equal(y.double(), _masked_max_pool(x.double(), keep, 2, None, 0, 1))
    # 2x2 windows at stride 1 overlap and take the walk: the same draws again.
    y1 = tc.max_pool2d_dropout(x, 2, 1, p=p, seed=seed)
    assert torch.equal(y1.double(), _masked_max_pool(x.double(), keep, 2, 1, 0, 1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_dropout_dtypes_layouts(dtype, channels_last):
    p, seed, geometry = 0.4, 3, (3, 2, 1, 1)
    x = rand(2, 6, 9, 11, dtype=dtype, channels_last=channels_last, requires_grad=True)
    keep = _kept_units(x.detach(), p, seed)
    y = tc.max_pool2d_dropout(x, *geometry, p=p, seed=seed)
    xr = x.detach().double().requires_grad_()
    ref = _masked_max_pool(xr, keep, *geometry)
    assert torch.equal(y.double(), ref)
    _check_layout(y, channels_last)
    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    _check_layout(x.grad, channels_last)


@pytest.mark.parametrize("geometry", [(2, None, 0, 1), (3, 1, 1, 1)], ids=["2x2s2", "3x3s1p1"])
def test_pool_dropout_monte_carlo_matches_eval(geometry):
    """Over many independent maps holding the same values, the training output averages to the eval
    output (its exact expectation), and a window of n units is empty (output 0) with probability p^n."""
    p, samples = 0.5, 2048
    base = rand(1, 1, 5, 6)
    x = base.expand(1, samples, 5, 6)
    y = tc.max_pool2d_dropout(x, *geometry, p=p).double()
    expected = tc.max_pool2d_dropout(base, *geometry, p=p, training=False).double()[0, 0]
    assert_close(expected, _weighted_pool(base.double(), *geometry, p)[0, 0], torch.float32, "eval")
    mean, std = y.mean(dim=(0, 1)), y.std(dim=(0, 1))
    assert bool(((mean - expected).abs() <= 5 * std / samples**0.5).all()), f"{mean} vs {expected}"

    kernel, stride, padding, _ = geometry  # dilation 1: units per window = sum of ones over the window
    units = F.avg_pool2d(torch.ones(1, 1, 5, 6, dtype=torch.float64), kernel, stride, padding, divisor_override=1)
    empty = (y == 0).double().mean(dim=(0, 1))
    prob = p ** units[0, 0]
    assert bool(((empty - prob).abs() <= 5 * (prob * (1 - prob) / samples) ** 0.5).all())


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", [(2, None, 0, 1), (3, 2, 1, 1), ((2, 3), 1, (1, 0), (2, 1))],
                         ids=["2x2s2", "3x3s2p1", "2x3d2"])
def test_pool_dropout_eval_is_weighted_pooling(geometry, dtype, channels_last):
    p = 0.3
    x = rand(2, 3, 8, 9, dtype=dtype, channels_last=channels_last, requires_grad=True)
    state = torch.get_rng_state()
    y = tc.max_pool2d_dropout(x, *geometry, p=p, training=False)
    assert torch.equal(torch.get_rng_state(), state), "eval mode consumed random numbers"
    xr = x.detach().double().requires_grad_()
    ref = _weighted_pool(xr, *geometry, p)
    assert_close(y, ref, dtype, "forward")
    _check_layout(y, channels_last)
    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")


@pytest.mark.parametrize("geometry", CELL_GEOMETRIES, ids=[f"k{k}s{s}p{p}" for k, s, p in CELL_GEOMETRIES])
def test_pool_dropout_eval_cells_with_ties(geometry):
    """The weighted backward's cell paths (every stride, padding, partial cells), on values with many ties
    (ranked by tap) and a non-contiguous input view, against the float64 stable sort."""
    p = 0.4
    x = (rand(2, 3, 13, 30) * 2).round()[:, :, :, ::2].requires_grad_()   # 13 x 15, W stride 2
    y = tc.max_pool2d_dropout(x, *geometry, p=p, training=False)
    xr = x.detach().double().requires_grad_()
    ref = _weighted_pool(xr, *geometry, 1, p)
    assert_close(y, ref, torch.float32, "forward")
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("geometry", CELL_GEOMETRIES, ids=[f"k{k}s{s}p{p}" for k, s, p in CELL_GEOMETRIES])
def test_pool_dropout_eval_forward_cells(monkeypatch, geometry, channels_last):
    """The weighted forward's cells (kernels.pooling `_window_cells`: each lane sorts the windows of a cell
    of outputs from one load of its patch), on contiguous maps whose NCHW rows load as runs of 4, 13 rows
    so that padded geometries cut the last row of windows as well as the first, against the float64 stable
    sort; and that the cells ran."""
    p = 0.3
    x = rand(2, 3, 13, 20, channels_last=channels_last)
    seen = []
    run = max_pool2d_forward_kernel.run
    monkeypatch.setattr(max_pool2d_forward_kernel, "run", lambda *args, **kwargs: seen.append(
        (kwargs["CELL_H"] > 0, kwargs["CELL_RUNS"])) or run(*args, **kwargs))
    with dispatch.recording():
        y = tc.max_pool2d_dropout(x, *geometry, p=p, training=False)
    assert seen == [(True, not channels_last)]
    assert_close(y, _weighted_pool(x.double(), *geometry, 1, p), torch.float32, "forward")


@pytest.mark.parametrize("training", [True, False])
def test_pool_dropout_p_zero_is_max_pool(training):
    x = rand(2, 3, 9, 8, requires_grad=True)
    state = torch.get_rng_state()
    y = tc.max_pool2d_dropout(x, 3, 2, 1, p=0.0, training=training)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(y, tc.max_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("training", [True, False])
def test_pool_dropout_p_one_gives_zeros(training):
    x = rand(1, 3, 6, 7, requires_grad=True)
    y = tc.max_pool2d_dropout(x, 2, p=1.0, training=training)
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_pool_dropout_reproducible():
    x = rand(2, 4, 8, 8)
    torch.manual_seed(1)
    first = tc.max_pool2d_dropout(x, 2)
    second = tc.max_pool2d_dropout(x, 2)
    torch.manual_seed(1)
    assert torch.equal(tc.max_pool2d_dropout(x, 2), first)
    assert not torch.equal(first, second)
    fixed = tc.max_pool2d_dropout(x, 2, seed=42)
    assert torch.equal(tc.max_pool2d_dropout(x, 2, seed=42), fixed)
    assert not torch.equal(tc.max_pool2d_dropout(x, 2, seed=43), fixed)
    assert torch.equal(tc.max_pool2d_dropout(x.contiguous(memory_format=torch.channels_last), 2, seed=42), fixed)


def test_pool_dropout_saves_no_mask():
    x = rand(2, 3, 8, 8, requires_grad=True)
    y = tc.max_pool2d_dropout(x, 2, p=0.5)
    (saved,) = y.grad_fn.saved_tensors
    assert saved.dtype == torch.uint8 and saved.shape == y.shape


def test_empty_batch():
    x = rand(0, 3, 6, 6, requires_grad=True)
    for y in (tc.max_pool2d(x, 2), tc.max_pool2d_dropout(x, 2), tc.max_pool2d_dropout(x, 2, training=False)):
        assert y.shape == (0, 3, 3, 3)
        y.sum().backward()


# ---------------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda x: tc.max_pool2d(x, 0), ValueError, "kernel_size must be >= 1"),
    (lambda x: tc.max_pool2d(x, 2, 0), ValueError, "stride must be >= 1"),
    (lambda x: tc.max_pool2d(x, 2, 1, -1), ValueError, "padding must be >= 0"),
    (lambda x: tc.max_pool2d(x, 3, 1, 2), ValueError, "padding must be at most half the kernel size"),
    (lambda x: tc.max_pool2d(x, 2, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda x: tc.max_pool2d(x, 8), ValueError, "does not fit"),
    (lambda x: tc.max_pool2d(x, 3, dilation=4), ValueError, "does not fit"),
    (lambda x: tc.max_pool2d(x, 2.5), TypeError, "kernel_size must be an int"),
    (lambda x: tc.max_pool2d(x, 2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
    (lambda x: tc.max_pool2d(x[0, 0], 2), ValueError, r"input must be \(N, C, H, W\)"),
    (lambda x: tc.max_pool2d(x.double(), 2), TypeError, "input has dtype"),
    (lambda x: tc.max_pool2d(x.to(torch.int64), 2), TypeError, "input has dtype"),
    (lambda x: tc.max_pool2d_dropout(x, 2, p=1.5), ValueError, r"p must be in \[0, 1\]"),
    (lambda x: tc.max_pool2d_dropout(x, 2, p=None), TypeError, "p must be a float"),
    (lambda x: tc.max_pool2d_dropout(x, 2, seed=1.0), TypeError, "seed must be an int"),
    (lambda x: tc.max_pool2d_dropout(x, 2, training=False, seed=-3), ValueError, "seed must be in"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(rand(1, 2, 7, 7))


def test_torch_compile_fullgraph_matches_eager():
    def pools(x):
        y = tc.max_pool2d_dropout(x, 3, 1, 1, p=0.4, seed=5)
        return tc.max_pool2d_dropout(y, 2, p=0.3, training=False) + tc.max_pool2d(y, 2)

    x = rand(2, 3, 8, 9, requires_grad=True)
    compiled = torch.compile(pools, fullgraph=True)
    out = compiled(x)
    assert_close(out, pools(x).double(), torch.float32, "compiled forward")
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    pools(x).sum().backward()
    assert_close(grad, x.grad.double(), torch.float32, "compiled backward")


@op_sample("max_pool2d")
def _max_pool_sample() -> torch.Tensor:
    return tc.max_pool2d(rand(2, 4, 6, 6, requires_grad=True), 3, 2, 1)


@op_sample("max_pool2d_dropout")
def _dropout_sample() -> torch.Tensor:
    return tc.max_pool2d_dropout(rand(2, 4, 6, 6, requires_grad=True), 2, p=0.3)


@op_sample("max_pool2d_dropout eval")
def _weighted_sample() -> torch.Tensor:
    return tc.max_pool2d_dropout(rand(2, 4, 6, 6, requires_grad=True), 2, p=0.3, training=False)
