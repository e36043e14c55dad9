"""depthwise_separable_conv2d against the two-step composition conv2d(groups=C) -> activation -> conv2d(1x1)
in float64: forward, backward, every activation, layouts, dtypes, one fused forward kernel, bad input."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from bench.reference import ACTIVATIONS
from conftest import DEVICE, assert_close, dtype_layouts, op_sample, rand
from tritonconv import dispatch


# (N, C, H, W, multiplier, (KH, KW), F, stride, padding, dilation): K = 3, 5, 7, multipliers 1 and 2,
# stride 2, dilation 2, "same"; intermediate channels over one reduction step (40 > 32) and F over 64 (case
# 2: our depthwise op then our pointwise op); 32 intermediate channels (whole steps, EVEN_K). Each
# thread takes OUT_W outputs along W (the sliding window): an odd output width (case 0: the last group
# runs past the row), kernel rows in a runtime loop (7x7, case 3), a 1x3 kernel on an even width (case 4).
# Each runs in every dtype and layout, with the activations taking turns.
CASES = [
    (2, 5, 6, 7, 1, (3, 3), 6, 1, 1, 1),
    (1, 6, 9, 8, 2, (5, 5), 20, 2, 2, 1),
    (1, 20, 6, 7, 2, (3, 3), 70, 1, "same", 2),
    (2, 3, 7, 6, 1, (7, 7), 4, 1, 3, 1),
    (2, 16, 5, 4, 2, (1, 3), 9, 1, (0, 1), 1),
]
PARAMS = [pytest.param(case, dtype, cl, act, id=f"case{i}-{act}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for i, case in enumerate(CASES) for dtype, cl in dtype_layouts(i)
          for act in [list(ACTIVATIONS)[(2 * i + cl) % len(ACTIVATIONS)]]]


def _two_step(x, wd, bd, wp, bp, stride, padding, dilation, activation):
    mid = F.conv2d(x, wd, bd, stride, padding, dilation, x.shape[1])
    return F.conv2d(ACTIVATIONS[activation](mid), wp, bp)


def _check(case, dtype, channels_last, activation, scale=1.0):
    n, c, h, w_, mult, k, f, stride, padding, dilation = case
    x = (scale * rand(n, c, h, w_, dtype=dtype, channels_last=channels_last)).requires_grad_()
    wd = rand(c * mult, 1, *k, dtype=dtype, requires_grad=True)
    bd = rand(c * mult, dtype=dtype, requires_grad=True)
    wp = rand(f, c * mult, 1, 1, dtype=dtype, requires_grad=True)
    bp = rand(f, dtype=dtype, requires_grad=True)
    y = tc.depthwise_separable_conv2d(x, wd, wp, bd, bp, stride, padding, dilation, activation)

    leaves = (x, wd, bd, wp, bp)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    ref = _two_step(*refs[:3], *refs[3:], stride, padding, dilation, activation)
    assert_close(y, ref, dtype, "forward")
    assert y.dtype == dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)

    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    for name, t, r in zip(("input", "depthwise weight", "depthwise bias", "pointwise weight", "pointwise bias"),
                          leaves, refs):
        assert_close(t.grad, r.grad, dtype, f"{name} grad")
    assert x.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("case,dtype,channels_last,activation", PARAMS)
def test_separable_forward_backward(case, dtype, channels_last, activation):
    _check(case, dtype, channels_last, activation)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_against_two_step(activation):
    """Each activation between the two convolutions, with intermediates spread well past relu6's clamp."""
    _check((2, 4, 5, 6, 2, (3, 3), 7, 1, 1, 1), torch.float32, True, activation, scale=4.0)


PAIR = ["depthwise_forward", "pointwise_forward"]


@pytest.mark.parametrize("f,channels_last,kernels", [(64, True, ["separable_forward"]), (65, True, PAIR),
                                                     (64, False, PAIR), (65, False, PAIR)])
def test_forward_kernels(f, channels_last, kernels):
    """Up to 64 output channels in channels_last the fused kernel runs alone (the intermediate never
    reaches memory); over 64 (tritonconv.separable.MAX_FUSED_CHANNELS), or in NCHW, our depthwise op then
    our pointwise op."""
    x, wd, wp = rand(1, 4, 6, 6, channels_last=channels_last), rand(4, 1, 3, 3), rand(f, 4, 1, 1)
    with torch.no_grad(), dispatch.recording() as decisions:
        y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="relu")
    assert [d.problem.kernel for d in decisions] == kernels
    assert_close(y, _two_step(x.double(), wd.double(), None, wp.double(), None, 1, 1, 1, "relu"), torch.float32,
                 "forward")


def _forcing(monkeypatch, **meta):
    """Launch the fused kernel with the interpreter's configuration but `meta` (OUT_W, BLOCK_M, ...)."""
    spec = dispatch.spec("separable_forward")
    monkeypatch.setitem(dispatch._KERNELS, "separable_forward", dataclasses.replace(
        spec, heuristic=lambda problem, interpreter: dispatch.Config.of(
            **{**dict(spec.heuristic(problem, interpreter).meta), **meta}, num_warps=4, num_stages=1)))


# (N, C, H, W, KH x KW, F, stride, padding, dilation, OUT_W, BLOCK_M), subsampled: F = 24, 17, 64; C = 17
# and 144 (K over several steps, and not a multiple of the step); stride 2; dilation 2; a width that is
# not a multiple of OUT_W; one output per thread (OUT_W 1) and four.
FUSED = [
    (2, 17, 6, 9, (3, 3), 24, 1, 1, 1, 4, 64),
    (1, 144, 5, 6, (3, 3), 17, 1, 1, 1, 2, 32),
    (2, 17, 7, 8, (3, 3), 64, 2, 1, 1, 4, 64),
    (1, 20, 7, 7, (3, 3), 24, 1, 2, 2, 2, 32),
    (1, 17, 6, 7, (5, 5), 17, 2, 2, 1, 1, 16),
]


@pytest.mark.parametrize("case", FUSED, ids=[f"fused{i}" for i in range(len(FUSED))])
@pytest.mark.parametrize("layout", ["dense", "strided"])
def test_fused_kernel_paths(case, layout, monkeypatch):
    """The fused kernel at forced OUT_W and BLOCK_M, against float64, forward with the stored intermediate
    (as autograd's forward runs it): channels_last x (rows addressed as pixels when OW is a multiple of
    OUT_W), with dense or non-contiguous views of the weights and biases (a non-contiguous x is in no
    memory format, so the op does not fuse it; nor NCHW: test_forward_kernels). Outputs start as NaN (conftest), so an element not written fails."""
    n, c, h, w_, k, f, stride, padding, dilation, out_w, block_m = case
    _forcing(monkeypatch, OUT_W=out_w, BLOCK_M=block_m)
    act = list(ACTIVATIONS)[FUSED.index(case) % len(ACTIVATIONS)]
    x = rand(n, c, h, w_, channels_last=True)
    wd, bd, wp, bp = rand(c, 1, *k), rand(c), rand(f, c, 1, 1), rand(f)
    if layout == "strided":
        wd, bd = rand(c, 2, *k)[:, :1], rand(2 * c)[::2]
        wp, bp = rand(f, 2 * c, 1, 1)[:, ::2], rand(2 * f)[::2]
    oh, ow = ((size + 2 * padding - dilation * (kk - 1) - 1) // stride + 1 for size, kk in ((h, k[0]), (w_, k[1])))
    with dispatch.recording() as decisions:
        y, a, z = torch.ops.tritonconv.depthwise_separable_conv2d(
            x, wd, bd, wp, bp, [stride] * 2, [padding] * 2, [dilation] * 2, c, [oh, ow], act or "none", True)
    assert [(d.problem.kernel, d.config["OUT_W"]) for d in decisions] == [("separable_forward", out_w)]
    t = F.conv2d(x.double(), wd.double(), bd.double(), stride, padding, dilation, c)
    assert_close(y, F.conv2d(ACTIVATIONS[act](t), wp.double(), bp.double()), torch.float32, "y")
    assert_close(a, ACTIVATIONS[act](t), torch.float32, "a")
    if act in ("silu", "gelu"):
        assert_close(z, t, torch.float32, "z")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last,width", [(True, 7), (True, 8), (False, 7)])
@pytest.mark.parametrize("activation", ["relu6", "gelu", None])
def test_stored_intermediate(activation, channels_last, width, dtype):
    """With store_mid the op also returns the intermediate a = act(t) and, for silu and gelu, t itself (for
    relu and relu6 the backward takes a in t's place), as our depthwise op would store them: an odd output
    width (the last pair's right output is not stored), an even one (channels_last: rows addressed as
    pixels, DENSE_ROWS), and K over one step."""
    x = rand(2, 20, 5, width, dtype=dtype, channels_last=channels_last)
    wd, bd, wp = rand(40, 1, 3, 3, dtype=dtype), rand(40, dtype=dtype), rand(6, 40, 1, 1, dtype=dtype)
    act = activation or "none"
    y, a, z = torch.ops.tritonconv.depthwise_separable_conv2d(x, wd, bd, wp, None, [1, 1], [1, 1], [1, 1], 20,
                                                              [5, width], act, True)
    t = F.conv2d(x.double(), wd.double(), bd.double(), 1, 1, 1, 20)
    assert_close(a, ACTIVATIONS[activation](t), dtype, "a")
    assert a.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if act == "gelu":
        assert_close(z, t, dtype, "z")
    else:
        assert z.numel() == 0
    assert_close(y, F.conv2d(ACTIVATIONS[activation](t), wp.double()), dtype, "y")


def test_backward_reuses_the_stored_intermediate():
    """The backward runs no depthwise forward: the forward kept the intermediate."""
    x = rand(1, 4, 6, 6, channels_last=True, requires_grad=True)
    wd, wp = rand(4, 1, 3, 3, requires_grad=True), rand(5, 4, 1, 1, requires_grad=True)
    y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="relu6")
    with dispatch.recording() as decisions:
        y.backward(torch.ones_like(y))
    assert not {"depthwise_forward", "separable_forward"} & {d.problem.kernel for d in decisions}


def test_backward_without_stored_intermediate_says_so():
    x = rand(1, 4, 6, 6, channels_last=True, requires_grad=True)
    wd, wp = rand(4, 1, 3, 3), rand(5, 4, 1, 1)
    y, _, _ = torch.ops.tritonconv.depthwise_separable_conv2d(x, wd, None, wp, None, [1, 1], [1, 1], [1, 1], 4,
                                                              [6, 6], "relu", False)
    with pytest.raises(RuntimeError, match="pass store_mid=True when a gradient is needed"):
        y.sum().backward()


def test_only_pointwise_weight_needs_grad():
    """Backward skips the depthwise gradients when nothing before the pointwise conv needs them."""
    x, wd = rand(1, 3, 5, 5), rand(6, 1, 3, 3)
    wp = rand(4, 6, 1, 1, requires_grad=True)
    y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="silu")
    with dispatch.recording() as decisions:
        y.backward(torch.ones_like(y))
    assert not {"depthwise_input_grad", "depthwise_weight_grad"} & {d.problem.kernel for d in decisions}
    wr = wp.detach().double().requires_grad_()
    _two_step(x.double(), wd.double(), None, wr, None, 1, 1, 1, "silu").sum().backward()
    assert_close(wp.grad, wr.grad, torch.float32, "pointwise weight grad")


def test_batch_zero():
    x = rand(0, 3, 5, 5, requires_grad=True)
    wd, wp = rand(6, 1, 3, 3, requires_grad=True), rand(4, 6, 1, 1, requires_grad=True)
    y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="gelu")
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(wd.grad, torch.zeros_like(wd)) and torch.equal(wp.grad, torch.zeros_like(wp))


def test_launch_per_batch_slice(monkeypatch):
    """Batches over 2^31 output pixels launch once per slice; forced here to one image per launch."""
    monkeypatch.setattr(tc.separable, "int32_batches", lambda batch, per_image: [slice(i, i + 1) for i in range(batch)])
    _check((3, 4, 5, 6, 1, (3, 3), 5, 1, 1, 1), torch.float32, True, "silu")


def test_fused_int64_offsets(monkeypatch):
    """The fused kernel's 64-bit offsets (INT64, set for tensors over 2^30 elements), forced on a small
    channels_last problem."""
    monkeypatch.setattr(tc.separable, "needs_int64", lambda *tensors: True)
    with dispatch.recording() as decisions:
        _check((2, 5, 6, 9, 1, (3, 3), 7, 1, 1, 1), torch.float16, True, "relu6")  # a shape no other test plans
    assert "separable_forward" in {d.problem.kernel for d in decisions}


def test_indexing_beyond_int32(monkeypatch):
    """A view whose second image starts 2^31 elements into its storage."""
    big = 2**31 + 64
    c, h, w_ = 2, 5, 4
    # Without the NaN fill, the 4 GiB storage stays unwritten (and unallocated) except for the two images.
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)
    storage = torch.empty(big + c * h * w_, dtype=torch.float16, device=DEVICE)
    x = storage.as_strided((2, c, h, w_), (big, h * w_, w_, 1))
    x.copy_(torch.randn(2, c, h, w_, dtype=torch.float64).to(torch.float16))
    wd, wp = rand(c, 1, 3, 3, dtype=torch.float16), rand(3, c, 1, 1, dtype=torch.float16)
    y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="relu6")
    ref = _two_step(x.double(), wd.double(), None, wp.double(), None, 1, 1, 1, "relu6")
    assert_close(y, ref, torch.float16, "far image")


def _bad(**overrides):
    args = dict(input=rand(1, 4, 6, 6), depthwise_weight=rand(8, 1, 3, 3), pointwise_weight=rand(5, 8, 1, 1),
                depthwise_bias=None, pointwise_bias=None, stride=1, padding=0, dilation=1, activation=None)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,match", [
    (dict(activation="swish"), ValueError, "unknown activation 'swish'; valid names are None"),
    (dict(depthwise_weight=rand(8, 4, 3, 3)), ValueError, r"depthwise_weight must have shape \(C \* multiplier"),
    (dict(depthwise_weight=rand(6, 1, 3, 3)), ValueError, "C = 4 input channels"),
    (dict(pointwise_weight=rand(5, 4, 1, 1)), ValueError,
     r"pointwise_weight must have shape \(F, 8, 1, 1\) to take the depthwise output's 8 channels"),
    (dict(pointwise_weight=rand(5, 8, 3, 3)), ValueError, "pointwise_weight must have shape"),
    (dict(pointwise_weight=rand(5, 8, 1, 1, dtype=torch.float16)), TypeError, "pointwise_weight has dtype"),
    (dict(depthwise_weight=rand(8, 1, 3, 3, dtype=torch.bfloat16)), TypeError, "depthwise_weight has dtype"),
    (dict(depthwise_bias=rand(4)), ValueError, r"depthwise_bias must have shape \(8,\)"),
    (dict(pointwise_bias=rand(8)), ValueError, r"pointwise_bias must have shape \(5,\)"),
    (dict(pointwise_bias=rand(5, dtype=torch.float16)), TypeError, "pointwise_bias has dtype"),
    (dict(input=rand(4, 6)), ValueError, r"input must be \(N, C, H, W\)"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(padding="full"), ValueError, "padding must be"),
])
def test_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        tc.depthwise_separable_conv2d(**_bad(**overrides))


def test_compiles_to_one_graph():
    """torch.compile(fullgraph=True) sees an opaque op with a fake implementation and registered backward."""
    x = rand(2, 3, 6, 5, channels_last=True, requires_grad=True)
    wd, wp = rand(6, 1, 3, 3, requires_grad=True), rand(4, 6, 1, 1, requires_grad=True)

    def block(x, wd, wp):
        return tc.depthwise_separable_conv2d(x, wd, wp, stride=2, padding=1, activation="gelu")

    y = torch.compile(block, fullgraph=True, backend="aot_eager")(x, wd, wp)
    assert y.is_contiguous(memory_format=torch.channels_last)
    leaves = (x, wd, wp)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    ref = _two_step(refs[0], refs[1], None, refs[2], None, 2, 1, 1, "gelu")
    assert_close(y, ref, torch.float32, "compiled forward")
    y.sum().backward()
    ref.sum().backward()
    for t, r in zip(leaves, refs):
        assert_close(t.grad, r.grad, torch.float32, "compiled backward")


def test_autocast_runs_in_the_lower_precision():
    x, wd, wp = rand(1, 4, 5, 5), rand(4, 1, 3, 3), rand(3, 4, 1, 1)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="relu")
    assert y.dtype == torch.bfloat16
    assert_close(y, _two_step(x.double(), wd.double(), None, wp.double(), None, 1, 1, 1, "relu"), torch.bfloat16,
                 "autocast")


@op_sample("depthwise_separable_conv2d")
def _sample() -> torch.Tensor:
    x = rand(2, 4, 6, 6, channels_last=True, requires_grad=True)  # channels_last: the op fuses (`_fuses`)
    return tc.depthwise_separable_conv2d(x, rand(4, 1, 3, 3, requires_grad=True), rand(5, 4, 1, 1, requires_grad=True),
                                         rand(4, requires_grad=True), rand(5, requires_grad=True), padding=1,
                                         activation="silu")
