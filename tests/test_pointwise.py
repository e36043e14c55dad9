"""pointwise_conv2d against activation(F.conv2d) with a 1x1 kernel in float64: forward, backward, every
activation, layouts, dtypes, strided and sliced inputs, conv2d routing, bad input."""

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from bench.reference import ACTIVATIONS
from conftest import DEVICE, DTYPES, assert_close, deterministic_algorithms, op_sample, rand
from tritonconv import dispatch


# (N, C, H, W, F, stride): odd sizes, non-power-of-two channels, C over one reduction step and F over one
# column tile of the interpreter's configuration, strides 1, 2 and (1, 2); channel counts that 8 divides
# but 16 does not and NCHW planes of 6x10 = 60 pixels (rows and planes the kernel knows start aligned:
# ALIGN_C, ALIGN_P). Each runs in every dtype and layout, with the activations taking turns.
CASES = [
    (2, 5, 6, 10, 6, 1),
    (1, 24, 5, 6, 40, 2),
    (3, 33, 4, 5, 70, (1, 2)),
]
PARAMS = [pytest.param(case, dtype, cl, act, id=f"case{i}-{act}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for i, case in enumerate(CASES) for dtype in DTYPES for j, cl in enumerate((False, True))
          for act in [list(ACTIVATIONS)[(2 * i + j) % len(ACTIVATIONS)]]]


def _check(x, w, b, stride, activation, dtype):
    """Forward and backward of pointwise_conv2d against the float64 reference."""
    y = tc.pointwise_conv2d(x, w, b, stride, activation)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = ACTIVATIONS[activation](F.conv2d(xr, wr, br, stride))
    assert_close(y, ref, dtype, "forward")
    assert y.dtype == dtype
    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    assert_close(w.grad, wr.grad, dtype, "weight grad")
    assert_close(b.grad, br.grad, dtype, "bias grad")
    return y


@pytest.mark.parametrize("case,dtype,channels_last,activation", PARAMS)
def test_pointwise_forward_backward(case, dtype, channels_last, activation):
    n, c, h, w_, f, stride = case
    x = rand(n, c, h, w_, dtype=dtype, channels_last=channels_last, requires_grad=True)
    w = rand(f, c, 1, 1, dtype=dtype, requires_grad=True)
    b = rand(f, dtype=dtype, requires_grad=True)
    y = _check(x, w, b, stride, activation, dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and x.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation(activation):
    """Each epilogue and its derivative, with pre-activations spread well past relu6's upper clamp."""
    x = (4 * rand(2, 6, 5, 7)).requires_grad_()
    w = rand(9, 6, 1, 1, requires_grad=True)
    b = rand(9, requires_grad=True)
    _check(x, w, b, 1, activation, torch.float32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_sliced_input_and_broadcast_gradient(channels_last):
    """An input view whose pixels are not evenly spaced (a column slice) takes the general addressing
    path; y.sum()'s gradient arrives expanded (stride 0), not in y's layout."""
    full = rand(2, 7, 6, 9, channels_last=channels_last)
    x = full[:, :, :, 2:].requires_grad_()
    w = rand(5, 7, 1, 1, requires_grad=True)
    y = tc.pointwise_conv2d(x, w, None, 1, "silu")
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = F.silu(F.conv2d(xr, wr))
    assert_close(y, ref, torch.float32, "forward")
    y.sum().backward()
    ref.sum().backward()
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")


def test_pre_activation_kept_only_for_autograd():
    """The forward writes the pre-activation only when an activation's backward will need it."""
    x, w = rand(1, 4, 3, 5, requires_grad=True), rand(6, 4, 1, 1)
    assert tc.pointwise.needs_pre_activation("gelu", x, w, None)
    assert not tc.pointwise.needs_pre_activation("none", x, w, None)
    assert not tc.pointwise.needs_pre_activation("gelu", x.detach(), w, None)
    with torch.no_grad():
        assert not tc.pointwise.needs_pre_activation("gelu", x, w, None)
        y = tc.pointwise_conv2d(x, w, None, 1, "gelu")
    assert_close(y, F.gelu(F.conv2d(x.double(), w.double())), torch.float32, "forward")


def test_indexing_beyond_int32(monkeypatch):
    """A view whose second image starts 2^31 elements into its storage, per-image GEMM in NCHW."""
    big = 2**31 + 64
    c, h, w_ = 3, 4, 5
    # Without the NaN fill, the 4 GiB storage stays unwritten (and unallocated) except for the two images.
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)
    storage = torch.empty(big + c * h * w_, dtype=torch.float16, device=DEVICE)
    x = storage.as_strided((2, c, h, w_), (big, h * w_, w_, 1))
    x.copy_(torch.randn(2, c, h, w_, dtype=torch.float64).to(torch.float16))
    w = rand(4, c, 1, 1, dtype=torch.float16)
    y = tc.pointwise_conv2d(x, w, activation="relu")
    assert_close(y, F.relu(F.conv2d(x.double(), w.double())), torch.float16, "far image")


def test_batch_zero():
    x = rand(0, 3, 4, 4, requires_grad=True)
    w = rand(5, 3, 1, 1, requires_grad=True)
    y = tc.pointwise_conv2d(x, w, activation="relu")
    assert y.shape == (0, 5, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_int32_batches():
    assert tc.pointwise.int32_batches(3, 10) == [slice(0, 3)]
    assert tc.pointwise.int32_batches(5, 2**30) == [slice(i, i + 1) for i in range(5)]
    assert tc.pointwise.int32_batches(5, 2**29) == [slice(0, 3), slice(3, 5)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_launch_per_batch_slice(monkeypatch, channels_last):
    """Batches over 2^31 output pixels launch once per slice; forced here to one image per launch."""
    monkeypatch.setattr(tc.pointwise, "int32_batches", lambda batch, per_image: [slice(i, i + 1) for i in range(batch)])
    x = rand(3, 5, 4, 6, channels_last=channels_last, requires_grad=True)
    w = rand(7, 5, 1, 1, requires_grad=True)
    b = rand(7, requires_grad=True)
    _check(x, w, b, 1, "relu6", torch.float32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("k,stride,padding,groups,family", [
    ((1, 1), 1, 0, 1, "pointwise"),
    ((1, 1), 2, 0, 1, "pointwise"),
    ((1, 1), 1, 1, 1, "implicit_gemm"),   # padding makes a border of bias-only pixels: not a plain GEMM
    ((1, 1), 1, 0, 2, "implicit_gemm"),
])
def test_conv2d_routes_pointwise(k, stride, padding, groups, family, channels_last):
    """conv2d sends unpadded ungrouped 1x1 kernels to the pointwise GEMM and computes the same result."""
    x = rand(2, 6, 5, 7, channels_last=channels_last, requires_grad=True)
    w = rand(4, 6 // groups, *k, requires_grad=True)
    b = rand(4, requires_grad=True)
    with dispatch.recording() as decisions:
        y = tc.conv2d(x, w, b, stride, padding, 1, groups)
    assert {d.family for d in decisions} == {family}
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xr, wr, br, stride, padding, 1, groups)
    assert_close(y, ref, torch.float32, "forward")
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")
    assert_close(b.grad, br.grad, torch.float32, "bias grad")


def _views(dtype, channels_last, stride):
    """x, w and dy as non-contiguous views (every other channel; x also a column slice), odd sizes and
    non-power-of-two channels: x (3, 7, 5, 9) -> y (3, 10, OH, OW)."""
    x = rand(3, 14, 5, 10, dtype=dtype, channels_last=channels_last)[:, ::2, :, 1:].requires_grad_()
    w = rand(10, 21, 1, 1, dtype=dtype)[:, ::3].requires_grad_()
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    oh, ow = (5 - 1) // sh + 1, (9 - 1) // sw + 1
    dy = rand(3, 20, oh, ow, dtype=dtype, channels_last=not channels_last)[:, ::2]
    return x, w, dy


@pytest.mark.parametrize("stride", [1, 2, (2, 1)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_gemms_on_views(dtype, channels_last, stride):
    """The 1x1 backward runs its own GEMMs (no implicit-GEMM kernel) on views of every tensor, in
    float32 accumulation against float64, into NaN-filled outputs; a strided convolution's input gradient
    is 0 at the pixels the stride skips."""
    x, w, dy = _views(dtype, channels_last, stride)
    y = tc.pointwise_conv2d(x, w, None, stride)
    with dispatch.recording() as decisions:
        y.backward(dy)
    kernels = {d.problem.kernel for d in decisions}
    assert {"pointwise_input_grad", "pointwise_weight_grad"} <= kernels
    assert not {"conv2d_input_grad", "conv2d_weight_grad"} & kernels
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    F.conv2d(xr, wr, None, stride).backward(dy.double())
    assert_close(x.grad, xr.grad, dtype, "input grad")
    assert_close(w.grad, wr.grad, dtype, "weight grad")


@pytest.mark.parametrize("deterministic", [True, False], ids=["workspace", "atomics"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_weight_grad_splits(channels_last, deterministic):
    """The pixel reduction split in two (105 pixels: one run of 4 steps, or 3 images of 2 steps each):
    under deterministic algorithms into a workspace that split_sum adds (bitwise-equal runs), else with
    atomics; both match the reference."""
    x = rand(3, 6, 5, 7, channels_last=channels_last)
    w = rand(4, 6, 1, 1, requires_grad=True)
    dy = rand(3, 4, 5, 7)
    grads = []
    with deterministic_algorithms(deterministic), dispatch.recording() as decisions:
        for _ in range(2):
            w.grad = None
            tc.pointwise_conv2d(x, w).backward(dy)
            grads.append(w.grad)
    configs = {d.problem.kernel: d.config for d in decisions}
    assert configs["pointwise_weight_grad"]["SPLIT_K"] == 2
    assert ("split_sum" in configs) == deterministic
    if deterministic:
        assert torch.equal(grads[0], grads[1])
    wr = w.detach().double().requires_grad_()
    F.conv2d(x.double(), wr).backward(dy.double())
    assert_close(grads[0], wr.grad, torch.float32, "weight grad")


def _bad(**overrides):
    args = dict(input=rand(1, 4, 6, 6), weight=rand(3, 4, 1, 1), bias=None, stride=1, activation=None)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,match", [
    (dict(activation="tanh"), ValueError, r"unknown activation 'tanh'; valid names are None, 'relu', 'relu6'"),
    (dict(activation="ReLU"), ValueError, "unknown activation"),
    (dict(activation=F.relu), TypeError, "activation must be None or one of"),
    (dict(weight=rand(3, 4, 3, 3)), ValueError, r"weight must have shape \(F, 4, 1, 1\)"),
    (dict(weight=rand(3, 5, 1, 1)), ValueError, r"weight must have shape \(F, 4, 1, 1\) to take input's 4 channels"),
    (dict(weight=rand(3, 4, 1, 1, dtype=torch.float16)), TypeError, "weight has dtype"),
    (dict(weight=None), TypeError, "weight must be a torch.Tensor"),
    (dict(bias=rand(4)), ValueError, "bias must have shape"),
    (dict(input=rand(1, 4, 6, 6).double()), TypeError, "input has dtype"),
    (dict(stride=(1, 0)), ValueError, "stride must be >= 1"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
])
def test_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        tc.pointwise_conv2d(**_bad(**overrides))


def test_autocast_runs_in_the_lower_precision():
    x, w, b = rand(1, 3, 4, 5), rand(6, 3, 1, 1), rand(6)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = tc.pointwise_conv2d(x, w, b, activation="silu")
    assert y.dtype == torch.bfloat16
    assert_close(y, F.silu(F.conv2d(x.double(), w.double(), b.double())), torch.bfloat16, "autocast")


@op_sample("pointwise_conv2d")
def _sample() -> torch.Tensor:
    x = rand(2, 4, 6, 6, requires_grad=True)
    return tc.pointwise_conv2d(x, rand(5, 4, 1, 1, requires_grad=True), rand(5, requires_grad=True),
                               activation="relu")
