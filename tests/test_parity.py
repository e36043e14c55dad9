"""Parity with PyTorch where its own OpInfo samples found gaps (issue 18): non-contiguous views of every
tensor argument (bias included), NaN in the weight, max_pool2d's indices, unbatched (C, H, W) input,
one-element tuples, an empty channel dimension."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import DEVICE, assert_close, rand


def strided(*shape: int, step: int = 2) -> torch.Tensor:
    """Random data as a view whose last axis has stride `step` (every tensor argument's worst case: no
    axis contiguous), with garbage (NaN) in the elements between, which a kernel must never read."""
    full = torch.full((*shape[:-1], shape[-1] * step), float("nan"), device=DEVICE)
    view = full[..., ::step]
    view.copy_(torch.randn(*shape, dtype=torch.float64))
    return view


def bias_views(f: int) -> dict[str, torch.Tensor]:
    """A bias of f channels as a strided slice and as one element expanded (stride 0)."""
    return {"slice": strided(f), "expand": rand(1).expand(f)}


def _ref_grads(fn, leaves, ref_fn, dy):
    """Run ours on `leaves` (made leaf tensors needing grad) and ref_fn in float64 on copies; backward
    both with `dy` (any view); return (y, ref, [(grad, ref_grad)])."""
    ours = [t.detach().requires_grad_() if t is not None else None for t in leaves]
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    y = fn(*ours)
    ref = ref_fn(*refs)
    y.backward(dy)
    ref.backward(dy.double())
    return y, ref, [(a.grad, b.grad) for a, b in zip(ours, refs) if a is not None]


CONV_PATHS = {
    # name: (C, weight shape, groups, padding)
    "implicit_gemm": (4, (6, 4, 3, 3), 1, 1),
    "depthwise": (4, (8, 1, 3, 3), 4, 1),
    "pointwise": (4, (6, 4, 1, 1), 1, 0),
}


@pytest.mark.parametrize("bias_kind", ["slice", "expand"])
@pytest.mark.parametrize("path", list(CONV_PATHS))
def test_conv_non_contiguous_views_of_every_argument(path, bias_kind):
    """x, w, bias and dy all strided views (bias also expanded from one element): every kernel must use
    the strides it is given, never assume them."""
    c, w_shape, groups, padding = CONV_PATHS[path]
    x, w = strided(2, c, 5, 6), strided(*w_shape)
    b = bias_views(w_shape[0])[bias_kind]
    assert tc.explain(tc.conv2d, x, w, b, 1, padding, 1, groups)["family"] == path
    dy = strided(2, w_shape[0], 5 + 2 * padding - w_shape[2] + 1, 6 + 2 * padding - w_shape[3] + 1)
    y, ref, grads = _ref_grads(lambda *t: tc.conv2d(*t, 1, padding, 1, groups), (x, w, b),
                               lambda *t: F.conv2d(*t, 1, padding, 1, groups), dy)
    assert_close(y, ref, torch.float32, "forward")
    for name, (g, r) in zip(("input", "weight", "bias"), grads):
        assert_close(g, r, torch.float32, f"{name} grad")


@pytest.mark.parametrize("bias_kind", ["slice", "expand"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_epilogue_ops_non_contiguous_bias(bias_kind, activation):
    """depthwise_conv2d and pointwise_conv2d with an activation (the stored pre-activation path)."""
    x = strided(2, 3, 5, 6)
    wd, wp = strided(6, 1, 3, 3), strided(5, 3, 1, 1)
    act = {None: lambda t: t, "relu": F.relu}[activation]
    y, ref, grads = _ref_grads(lambda a, b, c: tc.pointwise_conv2d(a, b, c, 1, activation),
                               (x, wp, bias_views(5)[bias_kind]), lambda a, b, c: act(F.conv2d(a, b, c)),
                               strided(2, 5, 5, 6))
    assert_close(y, ref, torch.float32, "pointwise forward")
    for g, r in grads:
        assert_close(g, r, torch.float32, "pointwise grad")
    y, ref, grads = _ref_grads(lambda a, b, c: tc.depthwise_conv2d(a, b, c, 1, 1), (x, wd, bias_views(6)[bias_kind]),
                               lambda a, b, c: F.conv2d(a, b, c, 1, 1, 1, 3), strided(2, 6, 5, 6))
    assert_close(y, ref, torch.float32, "depthwise forward")
    for g, r in grads:
        assert_close(g, r, torch.float32, "depthwise grad")


@pytest.mark.parametrize("bias_kind", ["slice", "expand"])
def test_separable_non_contiguous_views_of_every_argument(bias_kind):
    x = strided(2, 3, 5, 6)
    wd, wp = strided(6, 1, 3, 3), strided(5, 6, 1, 1)
    bd, bp = bias_views(6)[bias_kind], bias_views(5)[bias_kind]

    def ref(x, wd, wp, bd, bp):
        return F.conv2d(F.silu(F.conv2d(x, wd, bd, 1, 1, 1, 3)), wp, bp)

    y, r, grads = _ref_grads(lambda *t: tc.depthwise_separable_conv2d(*t, 1, 1, 1, "silu"), (x, wd, wp, bd, bp),
                             ref, strided(2, 5, 5, 6))
    assert_close(y, r, torch.float32, "forward")
    for name, (g, gr) in zip(("x", "wd", "wp", "bd", "bp"), grads):
        assert_close(g, gr, torch.float32, f"{name} grad")


def test_pool_and_dropout_non_contiguous_views():
    x = strided(2, 3, 7, 6)
    y, ref, [(g, r)] = _ref_grads(lambda t: tc.max_pool2d(t, 3, 2, 1), (x,), lambda t: F.max_pool2d(t, 3, 2, 1),
                                  strided(2, 3, 4, 3))
    assert torch.equal(y.double(), ref)
    assert_close(g, r, torch.float32, "max_pool2d input grad")
    for op in (tc.dropout, tc.spatial_dropout2d):
        xs = x.detach().requires_grad_()
        y = op(xs, 0.5, seed=3)
        dense = op(x.contiguous(), 0.5, seed=3)
        assert torch.equal(y, dense), "same mask and values from a strided view"
        dy = strided(2, 3, 7, 6)
        y.backward(dy)
        assert torch.equal(xs.grad, op(dy.contiguous(), 0.5, seed=3))


# ---------------------------------------------------------------------------------------------------------
# NaN in the weight: taps masked out of the input gradient contribute nothing, as in torch.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("path", list(CONV_PATHS))
def test_nan_weight_input_grad_positions(path, stride):
    c, w_shape, groups, padding = CONV_PATHS[path]
    x = rand(1, c, 7, 6)
    w = rand(*w_shape)
    w[0, 0, 0, -1] = float("nan")
    dy_shape = tc.conv2d(x, w, None, stride, padding, 1, groups).shape
    dy = rand(*dy_shape)
    _, _, grads = _ref_grads(lambda a, b: tc.conv2d(a, b, None, stride, padding, 1, groups), (x, w),
                             lambda a, b: F.conv2d(a, b, None, stride, padding, 1, groups), dy)
    (dx, dx_ref), _ = grads
    assert dx_ref.isnan().any() and not dx_ref.isnan().all()
    assert torch.equal(dx.isnan(), dx_ref.isnan()), "NaN spreads where torch's does, nowhere else"
    assert_close(dx.nan_to_num(), dx_ref.nan_to_num(), torch.float32, "finite part")


def test_nan_input_outside_output_tail_stays_out_of_weight_grad():
    """Depthwise weight gradient: the lanes of a tile past the output's edge must not read x (an inf
    there times a masked dy of 0 would be NaN); with stride 2 the last input row is read by no output."""
    x = rand(1, 4, 11, 11)
    x[:, :, -1, :] = float("inf")
    x[:, :, :, -1] = float("inf")
    w = rand(4, 1, 2, 2)
    dy = rand(1, 4, 5, 5)
    _, _, grads = _ref_grads(lambda a, b: tc.conv2d(a, b, None, 2, 0, 1, 4), (x, w),
                             lambda a, b: F.conv2d(a, b, None, 2, 0, 1, 4), dy)
    assert_close(grads[1][0], grads[1][1], torch.float32, "weight grad")


# ---------------------------------------------------------------------------------------------------------
# max_pool2d(return_indices=...)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("args", [(3, 2, 1, 1, False), ((2, 3), (1, 2), (1, 1), (2, 1), True), (2, None, 0, 1, True)])
def test_max_pool2d_return_indices(args, channels_last):
    x = torch.randint(0, 4, (2, 3, 9, 8)).float().to(DEVICE)  # ties: the first maximal tap's index
    x[0, 1, 2, 3] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    kernel, stride, padding, dilation, ceil = args
    y, idx = tc.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)
    assert torch.equal(y.nan_to_num(), ref.nan_to_num()) and torch.equal(y.isnan(), ref.isnan())
    assert idx.dtype == torch.int64 and torch.equal(idx, ref_idx)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(tc.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=False).nan_to_num(),
                       y.nan_to_num())
    # Without grad as with it; the indices do not change the gradient.
    xg = x.detach().requires_grad_()
    yg, idx_g = tc.max_pool2d(xg, kernel, stride, padding, dilation, ceil, return_indices=True)
    assert torch.equal(idx_g, ref_idx) and not idx_g.requires_grad
    yg.sum().backward()
    xr = x.detach().requires_grad_()
    F.max_pool2d(xr, kernel, stride, padding, dilation, ceil).sum().backward()
    assert torch.equal(xg.grad, xr.grad)


def test_max_pool2d_module_return_indices():
    pool = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)
    x = rand(1, 2, 7, 7)
    y, idx = tc.nn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    ref, ref_idx = pool(x)
    assert torch.equal(y, ref) and torch.equal(idx, ref_idx)
    model = tc.convert(torch.nn.Sequential(pool))
    assert isinstance(model[0], tc.nn.MaxPool2d)
    assert torch.equal(model(x)[1], ref_idx)


# ---------------------------------------------------------------------------------------------------------
# Unbatched (C, H, W) input, one-element tuples, empty channel dimension.
# ---------------------------------------------------------------------------------------------------------

UNBATCHED = {
    # op: (ours, torch's, weight shapes)
    "conv2d": (lambda x, w: tc.conv2d(x, w, None, 1, 1), lambda x, w: F.conv2d(x, w, None, 1, 1), [(5, 3, 3, 3)]),
    "depthwise": (lambda x, w: tc.depthwise_conv2d(x, w, None, 2, 1), lambda x, w: F.conv2d(x, w, None, 2, 1, 1, 3),
                  [(3, 1, 3, 3)]),
    "pointwise": (lambda x, w: tc.pointwise_conv2d(x, w, activation="relu"), lambda x, w: F.relu(F.conv2d(x, w)),
                  [(4, 3, 1, 1)]),
    "separable": (lambda x, wd, wp: tc.depthwise_separable_conv2d(x, wd, wp, padding=1),
                  lambda x, wd, wp: F.conv2d(F.conv2d(x, wd, None, 1, 1, 1, 3), wp), [(3, 1, 3, 3), (2, 3, 1, 1)]),
    "max_pool2d": (lambda x: tc.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), []),
}


@pytest.mark.parametrize("op", list(UNBATCHED))
def test_unbatched_input(op):
    ours, theirs, w_shapes = UNBATCHED[op]
    leaves = (rand(3, 7, 6), *(rand(*s) for s in w_shapes))
    y, ref, grads = _ref_grads(ours, leaves, theirs, rand(*theirs(*leaves).shape))
    assert y.shape == ref.shape and y.dim() == 3
    assert_close(y, ref, torch.float32, "forward")
    for g, r in grads:
        assert_close(g, r, torch.float32, "grad")


def test_unbatched_modules_and_pool_dropout():
    x = rand(3, 7, 6)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, device=DEVICE)
    assert_close(tc.convert(torch.nn.Sequential(conv))(x), F.conv2d(x.double(), conv.weight.double(),
                                                                   conv.bias.double(), padding=1), torch.float32)
    assert tc.nn.MaxPool2d(2)(x).shape == (3, 3, 3)
    assert tc.max_pool2d_dropout(x, 2, p=0.3, seed=1).shape == (3, 3, 3)
    assert torch.equal(tc.max_pool2d_dropout(x, 2, p=0.3, seed=1),
                       tc.max_pool2d_dropout(x[None], 2, p=0.3, seed=1)[0])


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5, 2), (6, 4)], ids=["3d", "5d", "2d"])
def test_spatial_dropout_other_ranks_warn_and_drop_like_torch(shape):
    """F.dropout2d on a 3-D input warns and drops (dim 0, dim 1) slices (it reads (N, C, L)); other ranks
    than 4 warn too and drop (dim 0, dim 1) feature blocks. Ours does the same, with the same warnings."""
    x = rand(*shape) + 3  # no zeros of its own
    with warnings.catch_warnings(record=True) as ours_w:
        warnings.simplefilter("always")
        y = tc.spatial_dropout2d(x, 0.5, seed=0)
        module_y = tc.nn.SpatialDropout2d(0.5)(x)
    with warnings.catch_warnings(record=True) as torch_w:
        warnings.simplefilter("always")
        F.dropout2d(x, 0.5)
    assert [str(w.message) for w in ours_w] == 2 * [str(w.message) for w in torch_w] and torch_w
    assert y.shape == x.shape and module_y.shape == x.shape
    kept = (y != 0).reshape(shape[0], shape[1], -1)
    assert (kept.all(-1) | ~kept.any(-1)).all(), "whole (dim 0, dim 1) blocks kept or dropped"
    assert 0 < kept.float().mean() < 1
    assert torch.allclose(y[y != 0], 2 * x[y != 0])


def test_one_element_tuples():
    x, w = rand(1, 3, 8, 7), rand(4, 3, 3, 3)
    assert_close(tc.conv2d(x, w, None, (2,), (1,), (2,)), F.conv2d(x.double(), w.double(), None, (2,), (1,), (2,)),
                 torch.float32)
    assert torch.equal(tc.max_pool2d(x, (3,), (2,), (1,), (1,)), F.max_pool2d(x, (3,), (2,), (1,), (1,)))
    assert torch.equal(tc.nn.MaxPool2d((3,), (2,))(x), torch.nn.MaxPool2d((3,), (2,))(x))
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        tc.conv2d(x, w, None, (1, 1, 1))


@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_conv2d_empty_channel_dim(padding):
    """torch gives (N, 0, OH, OW) for C = 0, zero gradients for weight and bias."""
    x = torch.randn(2, 0, 5, 6, device=DEVICE)
    w, b = rand(3, 0, 3, 3), rand(3)
    y, ref, grads = _ref_grads(lambda a, c, d: tc.conv2d(a, c, d, 1, padding), (x, w, b),
                               lambda a, c, d: F.conv2d(a, c, d, 1, padding), torch.empty(2, 0, 5 if padding else 3,
                                                                                         6 if padding else 4))
    assert y.shape == ref.shape == (2, 0) + ref.shape[2:]
    for g, r in grads:
        assert g.shape == r.shape and torch.equal(g.double(), r)


def test_max_pool2d_empty_channel_dim_raises_as_torch():
    x = rand(2, 0, 4, 4)
    with pytest.raises(RuntimeError):
        F.max_pool2d(x, 2)
    with pytest.raises(ValueError, match="input has no channels"):
        tc.max_pool2d(x, 2)
    with pytest.raises(ValueError, match="input has no channels"):
        tc.max_pool2d(rand(0, 4, 4), 2)
    assert tc.max_pool2d(rand(0, 3, 4, 4), 2).shape == (0, 3, 2, 2)
