"""conv2d against torch.nn.functional.conv2d in float64: forward, backward, layouts, dtypes, bad input."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import DEVICE, DTYPES, assert_close, deterministic_algorithms, dtype_layouts, op_sample, rand
from tritonconv import dispatch

# (N, C, H, W, F, (KH, KW), stride, padding, dilation, groups): odd sizes, non-power-of-two channels,
# dilation 1-4, stride 1-2, groups, non-square and factorised kernels, "same"/"valid".
CASES = [
    (2, 5, 9, 8, 6, (3, 3), 1, 1, 1, 1),
    (1, 6, 11, 10, 9, (3, 3), 2, 2, 2, 3),
    (2, 3, 13, 12, 5, (3, 3), 1, 4, 4, 1),
    (1, 4, 7, 9, 7, (1, 3), (1, 2), (0, 1), 1, 1),
    (2, 7, 8, 7, 3, (3, 1), 1, "same", (3, 1), 1),
    (1, 4, 10, 9, 4, (2, 4), 1, "same", 2, 2),
    (3, 5, 6, 7, 10, (5, 5), 2, "valid", 1, 5),
    (1, 18, 5, 5, 20, (1, 1), 1, 0, 1, 1),
]


def _reference(x, w, b, stride, padding, dilation, groups):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)


def _params(cases: list, name: str) -> list:
    """Each case in `dtype_layouts(i)`'s dtypes and layouts."""
    return [pytest.param(case, dtype, cl, id=f"{name}{i}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
            for i, case in enumerate(cases) for dtype, cl in dtype_layouts(i)]


@pytest.mark.parametrize("case,dtype,channels_last", _params(CASES, "case"))
def test_conv2d_forward_backward(case, dtype, channels_last):
    n, c, h, w_, f, k, stride, padding, dilation, groups = case
    x = rand(n, c, h, w_, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(f, c // groups, *k, dtype=dtype, requires_grad=True)
    b = rand(f, dtype=dtype, requires_grad=True)
    y = tc.conv2d(x, w, b, stride, padding, dilation, groups)

    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = _reference(xr, wr, br, stride, padding, dilation, groups)
    assert_close(y, ref, dtype, "forward")
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or y.shape[1] == 1

    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    assert_close(w.grad, wr.grad, dtype, "weight grad")
    assert_close(b.grad, br.grad, dtype, "bias grad")
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


# Strided input gradients, computed phase by phase (ih mod sh, iw mod sw): strides 2 and 3 per axis, odd
# sizes, dilations sharing a factor with the stride (gcd 2: half the phases get no tap at all, their dx
# must still be written as zeros over the NaN the output starts as) and not, a map smaller than its stride
# (a phase with no pixels), non-square kernels.
# (N, C, H, W, F, (KH, KW), stride, padding, dilation)
PHASE_CASES = [
    (1, 3, 9, 11, 4, (3, 3), 2, 1, 1),
    (1, 5, 10, 7, 3, (3, 2), 3, (2, 0), (2, 3)),
    (2, 4, 8, 9, 5, (4, 3), (2, 3), 3, (2, 1)),
    (1, 3, 13, 12, 2, (5, 3), (3, 2), (4, 1), (3, 2)),
    (1, 2, 2, 5, 3, (1, 3), 3, (0, 1), 1),
]


@pytest.mark.parametrize("case,dtype,channels_last", _params(PHASE_CASES, "phase"))
def test_strided_input_grad_by_phase(case, dtype, channels_last):
    n, c, h, w_, f, k, stride, padding, dilation = case
    x = rand(n, c, h, w_, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(f, c, *k, dtype=dtype)
    y = tc.conv2d(x, w, None, stride, padding, dilation)
    xr = x.detach().double().requires_grad_()
    ref = _reference(xr, w.double(), None, stride, padding, dilation, 1)
    assert_close(y, ref, dtype, "forward")
    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    assert x.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def _check_float32(x, w, stride, padding, dilation):
    """conv2d of float32 x and w (requiring grad), forward and both gradients, against float64 torch."""
    y = tc.conv2d(x, w, None, stride, padding, dilation)
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = _reference(xr, wr, None, stride, padding, dilation, 1)
    assert_close(y, ref, torch.float32, "forward")
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")


@pytest.mark.parametrize("dilation,padding,size", [(12, 12, 9), (24, 24, 9), (36, 36, 9), (24, 24, 13)])
def test_aspp_rates_skip_padding_taps(dilation, padding, size):
    """ASPP rates on small maps: most taps read only padding and are skipped; the result must not change."""
    _check_float32(rand(1, 4, size, size, requires_grad=True), rand(5, 4, 3, 3, requires_grad=True), 1, padding,
                   dilation)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("stride", [1, 2])
def test_flattened_reduction_ragged_tiles(stride, channels_last):
    """Several tiles (the last one ragged, some spanning two images), each with its own range of live
    taps at a high dilation (a tile of output rows 4-8 of 11 skips tap row 2, which reads rows 12-16),
    and channel counts with a ragged last block (40 = 32 + 8 in the interpreter) in both reductions: the
    (tap, channel block) walk must visit every live pair once."""
    _check_float32(rand(2, 40, 11, 30, channels_last=channels_last, requires_grad=True),
                   rand(36, 40, 3, 3, requires_grad=True), stride, (8, 4), (8, 4))


@pytest.mark.parametrize("kernel,channels_last", [((8, 4), False), ((7, 5), True)], ids=["32taps", "35taps"])
def test_many_taps(kernel, channels_last):
    """Row masks as bit tests of one word per row up to 32 live taps (the last one in the sign bit), and
    as coordinate comparisons beyond (see kernels/conv.py tap_reduction)."""
    _check_float32(rand(1, 3, 10, 9, channels_last=channels_last, requires_grad=True),
                   rand(4, 3, *kernel, requires_grad=True), 1, (4, 2), 1)


def test_live_taps_cut_padding_only_taps():
    x, w = rand(1, 2, 9, 9), rand(2, 2, 3, 3)
    geo = tc.conv.conv_geometry(x, w, None, 1, 36, 36, 1)
    assert geo.live_taps(0) == (1, 2) and geo.live_taps(1) == (1, 2)
    geo = tc.conv.conv_geometry(x, w, None, 1, 1, 1, 1)
    assert geo.live_taps(0) == (0, 3)


def test_batch_zero_and_no_bias():
    x = rand(0, 3, 5, 5, requires_grad=True)
    w = rand(4, 3, 3, 3, requires_grad=True)
    y = tc.conv2d(x, w, padding=1)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_indexing_beyond_int32(channels_last, monkeypatch):
    """A view whose third image starts 2^31 elements into its storage must read there: the image stride
    fits in int32 but image index * stride does not, so the kernels need 64-bit offsets (NCHW operands
    are first copied to channels_last, which exercises the copy instead)."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)  # 4 GiB of NaN is slow
    step = 2**30 + 32
    c, h, w_ = 2, 3, 4
    storage = torch.empty(2 * step + c * h * w_, dtype=torch.float16, device=DEVICE)
    strides = (step, 1, w_ * c, c) if channels_last else (step, h * w_, w_, 1)
    x = storage.as_strided((3, c, h, w_), strides)
    x.copy_(torch.randn(3, c, h, w_, dtype=torch.float64).to(torch.float16))
    w = rand(3, c, 3, 3, dtype=torch.float16, requires_grad=True)
    y = tc.conv2d(x, w, padding=1)
    xr, wr = x.detach().double(), w.detach().double().requires_grad_()
    ref = F.conv2d(xr, wr, padding=1)
    assert_close(y, ref, torch.float16, "far image")
    dy = rand(*ref.shape, dtype=torch.float16)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(w.grad, wr.grad, torch.float16, "far image weight grad")


# Weight tiles through a tensor descriptor (TMA on sm_90; B_DESCRIPTOR, a tuning candidate only), forced
# here: (N, C, H, W, F, (KH, KW), stride, padding, dilation, groups, weight). C_g is a multiple of 8, so
# the K-major rows and every tap's first column are 16-byte aligned in every dtype, as descriptors need;
# C_g = 8 and 40 leave the 16- and 32-channel steps ragged (the box reads into the next tap), 32 does
# not; F_g = 5 and 3 make a box reach into the next group's filters. Weights: "packed" (dense
# channels_last, loaded as it is), "nchw" (packed by the launcher), "offset" (dense channels_last but
# starting 2 bytes past a 16-byte boundary, so copied).
DESCRIPTOR_CASES = [
    (2, 64, 9, 7, 10, (3, 3), 1, 2, 2, 2, "packed"),
    (1, 8, 7, 9, 5, (3, 3), 2, 1, 1, 1, "nchw"),
    (1, 80, 6, 5, 6, (2, 2), 1, 1, 3, 2, "offset"),
]


def _descriptor_weight(f, c_g, k, dtype, kind):
    w = rand(f, c_g, *k, dtype=dtype)
    if kind == "nchw":
        return w
    packed = w.contiguous(memory_format=torch.channels_last)
    if kind == "packed":
        return packed
    storage = torch.empty(packed.numel() + 1, dtype=dtype, device=DEVICE)
    view = storage[1:].as_strided(packed.shape, packed.stride())
    return view.copy_(packed)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_loads_weights_through_a_tensor_descriptor(dtype, channels_last, monkeypatch):
    spec = dispatch.spec("conv2d_forward")
    block_k = 16 if dtype == torch.float32 else 32

    def descriptor(problem, interpreter):
        return dispatch.Config.of(**{**spec.heuristic(problem, interpreter).launch_kwargs(), "BLOCK_K": block_k,
                                     "B_DESCRIPTOR": 1})

    monkeypatch.setitem(dispatch._KERNELS, "conv2d_forward", dataclasses.replace(spec, heuristic=descriptor))
    dispatch.forget()
    try:
        for n, c, h, w_, f, k, stride, padding, dilation, groups, kind in DESCRIPTOR_CASES:
            x = rand(n, c, h, w_, dtype=dtype, channels_last=channels_last)
            w = _descriptor_weight(f, c // groups, k, dtype, kind)
            assert (w.data_ptr() % 16 != 0) == (kind == "offset")
            b = rand(f, dtype=dtype)
            with dispatch.recording() as decisions:
                y = tc.conv2d(x, w, b, stride, padding, dilation, groups)
            assert [d.config["B_DESCRIPTOR"] for d in decisions] == [1]
            assert_close(y, _reference(x, w, b, stride, padding, dilation, groups), dtype, f"forward, {kind} weight")
    finally:
        dispatch.forget()


def test_descriptor_candidates_only_where_tma_can_take_the_weight(monkeypatch):
    """B_DESCRIPTOR=1 configurations join the forward's tuning space (never its heuristic) on sm_90 (and
    with no GPU, where the interpreter and bench.static run them), not on sm_80; only with channel steps
    that divide C_g."""
    spec = dispatch.spec("conv2d_forward")

    def problem(c_g, dtype=torch.float16):
        return dispatch.Problem("conv2d_forward", m=16 * 65 * 65, n=256, k=c_g * 9, dtype=dtype, channels_last=True,
                                extra=(("taps", 9),))

    def descriptor_steps(p):
        return {c["BLOCK_K"] for c in spec.space(p) if c.get("B_DESCRIPTOR")}

    assert spec.heuristic(problem(256), False).get("B_DESCRIPTOR") is None
    assert descriptor_steps(problem(256)) == {32, 64, 128}
    assert descriptor_steps(problem(96)) == {32}
    assert descriptor_steps(problem(100, torch.float32)) == set()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert descriptor_steps(problem(256)) == set()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert descriptor_steps(problem(256)) == {32, 64, 128}


def _weight_grads(x, w, dy, stride, padding, dilation, groups, runs=2):
    """conv2d's weight gradient `runs` times, and the decisions the launches took."""
    grads = []
    with dispatch.recording() as decisions:
        for _ in range(runs):
            w.grad = None
            tc.conv2d(x, w, None, stride, padding, dilation, groups).backward(dy)
            grads.append(w.grad)
    return grads, {d.problem.kernel: d.config for d in decisions}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_deterministic_weight_grad_sums_a_workspace(dtype, channels_last):
    """Under torch.use_deterministic_algorithms(True) the weight gradient's split reduction goes to a
    float32 workspace that split_sum adds in a fixed order: two runs give the same bits, matching the
    float64 reference. (The interpreter runs programs one after another, so atomics would be
    reproducible here too: the launches taken are what shows the path.)"""
    x = rand(2, 5, 7, 9, dtype=dtype, channels_last=channels_last)
    w = rand(6, 5, 3, 3, dtype=dtype, requires_grad=True)
    dy = rand(2, 6, 5, 5, dtype=dtype)
    (first, second), configs = _weight_grads(x, w, dy, (1, 2), (0, 2), (1, 2), 1)
    assert configs["conv2d_weight_grad"]["SPLIT_K"] > 1 and configs["split_sum"]["BLOCK"] >= 16
    assert torch.equal(first, second)
    wr = w.detach().double().requires_grad_()
    F.conv2d(x.double(), wr, None, (1, 2), (0, 2), (1, 2)).backward(dy.double())
    assert_close(first, wr.grad, dtype, "deterministic weight grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_weight_grad_adds_splits_with_atomics_by_default(channels_last):
    """Without deterministic algorithms the splits add into the result with atomics: no workspace, no
    split_sum launch; the gradient still matches the reference."""
    x = rand(2, 4, 7, 6, channels_last=channels_last)
    w = rand(6, 2, 3, 3, requires_grad=True)
    dy = rand(2, 6, 7, 6)
    with deterministic_algorithms(False):
        (grad,), configs = _weight_grads(x, w, dy, 1, 1, 1, 2, runs=1)
    assert configs["conv2d_weight_grad"]["SPLIT_K"] > 1 and "split_sum" not in configs
    wr = w.detach().double().requires_grad_()
    F.conv2d(x.double(), wr, None, 1, 1, 1, 2).backward(dy.double())
    assert_close(grad, wr.grad, torch.float32, "atomic weight grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_grad_whole_channel_blocks(dtype, channels_last):
    """Channels that fill whole blocks (EVEN_M, EVEN_N: the weight gradient loads with no channel masks),
    on an output map smaller than a step and than the input (so a step's pixels carry into the next row and
    the next image, and their offsets in x jump)."""
    x = rand(8, 16, 7, 7, dtype=dtype, channels_last=channels_last)
    w = rand(32, 16, 3, 3, dtype=dtype, requires_grad=True)
    dy = rand(8, 32, 5, 5, dtype=dtype)
    (grad,), configs = _weight_grads(x, w, dy, 1, 1, 2, 1, runs=1)
    config = configs["conv2d_weight_grad"]
    assert 32 % config["BLOCK_M"] == 0 and 16 % config["BLOCK_N"] == 0 and config["BLOCK_K"] > 5 * 5
    assert 8 * 5 * 5 // config["BLOCK_K"] > config["SPLIT_K"]  # some split takes more than one step
    wr = w.detach().double().requires_grad_()
    F.conv2d(x.double(), wr, None, 1, 1, 2).backward(dy.double())
    assert_close(grad, wr.grad, dtype, "weight grad, whole channel blocks")


def _bad(**overrides):
    args = dict(input=rand(1, 4, 6, 6), weight=rand(2, 4, 3, 3), bias=None, stride=1, padding=0,
                dilation=1, groups=1)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,match", [
    (dict(weight=rand(2, 3, 3, 3)), ValueError, "input channels"),
    (dict(groups=3), ValueError, "groups"),
    (dict(groups=0), ValueError, "groups"),
    (dict(weight=rand(2, 4, 3, 3, dtype=torch.float16)), TypeError, "weight has dtype"),
    (dict(bias=rand(2, dtype=torch.bfloat16)), TypeError, "bias has dtype"),
    (dict(bias=rand(3)), ValueError, "bias must have shape"),
    (dict(input=rand(1, 4, 6, 6).double()), TypeError, "input has dtype"),
    (dict(input=torch.ones(1, 4, 6, 6, dtype=torch.int32, device=DEVICE)), TypeError, "input has dtype"),
    (dict(input=rand(4, 6)), ValueError, r"input must be \(N, C, H, W\)"),
    (dict(weight=rand(2, 4, 9, 9)), ValueError, "padded input"),
    (dict(dilation=4), ValueError, "padded input"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
    (dict(padding="same", stride=2), ValueError, "same"),
    (dict(padding="full"), ValueError, "padding must be"),
    (dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
])
def test_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        tc.conv2d(**_bad(**overrides))


def test_cpu_tensor_outside_interpreter():
    """A CPU tensor on the GPU path is refused, even right after the same call made a plan in the
    interpreter: switching the mode drops the plans."""
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    tc.conv2d(x, w)
    with tc._checks.running_as(tc._checks.Mode.GPU), pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        tc.conv2d(x, w)


def test_device_mismatch():
    x = torch.randn(1, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="weight is on"):
        tc._checks.check_same(torch.randn(2, 2, 3, 3), "weight", x, "input")


@pytest.mark.parametrize("groups,in_channels,kernel,pad,family", [
    (8, 8, (3, 3), (1, 1), "depthwise"),        # MobileNet 3x3 depthwise
    (8, 8, (1, 1), (0, 0), "depthwise"),        # 1x1 per channel is still depthwise
    (1, 64, (1, 1), (0, 0), "pointwise"),       # 1x1 projection
    (1, 64, (1, 1), (1, 1), "implicit_gemm"),   # padded 1x1 writes a border: not a plain GEMM
    (2, 64, (1, 1), (0, 0), "implicit_gemm"),   # grouped 1x1
    (1, 256, (3, 3), (24, 24), "implicit_gemm"),  # ASPP rate 24
    (4, 64, (3, 3), (1, 1), "implicit_gemm"),   # grouped 3x3
])
def test_conv2d_family(groups, in_channels, kernel, pad, family):
    assert tc.conv.conv2d_family(groups, in_channels, kernel, pad) == family


@op_sample("conv2d")
def _sample() -> torch.Tensor:
    x = rand(2, 4, 6, 6, requires_grad=True)
    return tc.conv2d(x, rand(6, 2, 3, 3, requires_grad=True), rand(6, requires_grad=True), padding=1, groups=2)
