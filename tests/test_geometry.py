"""Tests that tell height from width: every kernel, forward and both gradients, on geometries whose
kernel, stride, padding and dilation all differ between the two axes (and each transposed), on maps
with H != W; and max_pool2d's ceil_mode boundary, where the last window would start exactly at the
padded edge. A kernel that uses an H quantity where a W one belongs (the mutants bench/mutate.py
makes) fails here."""

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import assert_close, rand
from test_pooling import _kept_units, _masked_max_pool, _weighted_pool

# (kernel, stride, padding, dilation), each an (h, w) pair with h != w, and the transposed geometry.
CONV_GEOMETRIES = {
    "A": ((3, 2), (1, 2), (2, 1), (2, 1)),
    "B": ((2, 3), (2, 1), (1, 2), (1, 3)),
    # Dilation 6 on 5 rows: the first and last kernel rows read only padding and are cut on the host,
    # while every column tap is live.
    "dead_rows": ((3, 3), (1, 2), (6, 1), (6, 1)),
}
SIZE = (9, 11)  # H, W
LAYOUTS = {"nchw": False, "nhwc": True}


def _conv_case(name: str):
    kernel, stride, padding, dilation = CONV_GEOMETRIES[name]
    size = (5, 7) if name == "dead_rows" else SIZE
    return kernel, stride, padding, dilation, size


def _check_grads(leaves, refs, what):
    for i, (t, r) in enumerate(zip(leaves, refs)):
        assert_close(t.grad, r.grad, torch.float32, f"{what}: gradient {i}")


def _run(ours, theirs, leaves):
    """Forward both (ours in float32, torch in float64), backward one random dy; returns the leaves'
    float64 copies for the gradient comparison."""
    refs = [t.detach().double().requires_grad_() for t in leaves]
    y, ref = ours(*leaves), theirs(*refs)
    assert_close(y, ref, torch.float32, "forward")
    dy = rand(*ref.shape)
    y.backward(dy)
    ref.backward(dy.double())
    return refs


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("family,groups", [("implicit_gemm", 1), ("implicit_gemm", 2), ("depthwise", 3)])
@pytest.mark.parametrize("geometry", list(CONV_GEOMETRIES))
def test_conv_geometry_h_w(geometry, family, groups, layout):
    kernel, stride, padding, dilation, (h, w) = _conv_case(geometry)
    c, f = 6 if groups == 2 else 3, 6
    x = rand(2, c, h, w, channels_last=LAYOUTS[layout], requires_grad=True)
    weight = rand(f, c // groups, *kernel, requires_grad=True)
    args = (stride, padding, dilation, groups)
    assert tc.explain(tc.conv2d, x, weight, None, *args)["family"] == family
    refs = _run(lambda a, b: tc.conv2d(a, b, None, *args), lambda a, b: F.conv2d(a, b, None, *args), [x, weight])
    _check_grads([x, weight], refs, family)


@pytest.mark.parametrize("geometry", ["A", "B"])
def test_separable_geometry_h_w(geometry):
    kernel, stride, padding, dilation, (h, w) = _conv_case(geometry)
    leaves = [rand(2, 3, h, w, requires_grad=True), rand(6, 1, *kernel, requires_grad=True),
              rand(4, 6, 1, 1, requires_grad=True)]

    def theirs(x, wd, wp):
        return F.conv2d(F.relu(F.conv2d(x, wd, None, stride, padding, dilation, 3)), wp)

    refs = _run(lambda x, wd, wp: tc.depthwise_separable_conv2d(x, wd, wp, None, None, stride, padding, dilation,
                                                                 "relu"), theirs, leaves)
    _check_grads(leaves, refs, "separable")


@pytest.mark.parametrize("stride", [(1, 2), (2, 1), (2, 3)])
def test_pointwise_stride_h_w(stride):
    leaves = [rand(2, 5, *SIZE, requires_grad=True), rand(4, 5, 1, 1, requires_grad=True)]
    refs = _run(lambda x, w: tc.pointwise_conv2d(x, w, None, stride), lambda x, w: F.conv2d(x, w, None, stride),
                leaves)
    _check_grads(leaves, refs, "pointwise")


# (kernel, stride, padding, dilation) for pooling: padding at most half the kernel.
POOL_GEOMETRIES = {"A": ((3, 2), (2, 1), (1, 0), (1, 2)), "B": ((2, 3), (1, 2), (0, 1), (2, 1))}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("geometry", list(POOL_GEOMETRIES))
def test_max_pool_geometry_h_w(geometry, ceil_mode, layout):
    x = rand(2, 3, 10, 13, channels_last=LAYOUTS[layout], requires_grad=True)
    args = (*POOL_GEOMETRIES[geometry], ceil_mode)
    refs = _run(lambda t: tc.max_pool2d(t, *args), lambda t: F.max_pool2d(t, *args), [x])
    _check_grads([x], refs, "max_pool2d")


@pytest.mark.parametrize("geometry", list(POOL_GEOMETRIES))
def test_pool_dropout_geometry_h_w(geometry):
    """Training (the max of the kept units, one draw per unit) and eval (weighted pooling)."""
    x = rand(2, 3, 10, 13, requires_grad=True)
    keep = _kept_units(x.detach(), 0.4, seed=7)
    refs = _run(lambda t: tc.max_pool2d_dropout(t, *POOL_GEOMETRIES[geometry], p=0.4, seed=7),
                lambda t: _masked_max_pool(t, keep, *POOL_GEOMETRIES[geometry]), [x])
    _check_grads([x], refs, "max-pooling dropout")
    x.grad = None
    refs = _run(lambda t: tc.max_pool2d_dropout(t, *POOL_GEOMETRIES[geometry], p=0.4, training=False),
                lambda t: _weighted_pool(t, *POOL_GEOMETRIES[geometry], 0.4), [x])
    _check_grads([x], refs, "weighted pooling")


@pytest.mark.parametrize("transpose", [False, True])
def test_ceil_mode_window_starting_at_the_padded_edge(transpose):
    """Rows: 5 + 2*1 padding, kernel 2, stride 2: ceil mode would add a fourth window starting at row 6,
    exactly the padded edge (size + left padding); torch drops it (3 rows). Columns (W = 8) keep their
    last ceil-mode window, which starts inside. Transposed too, so the two axes never agree."""
    kernel, size = ((2, 3), (5, 8)) if not transpose else ((3, 2), (8, 5))
    x = rand(1, 2, *size, requires_grad=True)
    args = (kernel, 2, 1, 1, True)
    refs = _run(lambda t: tc.max_pool2d(t, *args), lambda t: F.max_pool2d(t, *args), [x])
    assert tc.max_pool2d(x, *args).shape[2:] == ((3, 5) if not transpose else (5, 3))
    _check_grads([x], refs, "ceil_mode edge")


def test_cutout_and_drop_block_h_w():
    """Non-square maps (5 x 12). Cutout: one clipped 3x3 square per map, centred inside the map, so at
    least 2x2 of it is cut in every map, and centres reach the right half. DropBlock: the dropped pixels
    are exactly a union of whole 3x3 squares inside the map."""
    x = rand(4, 8, 5, 12) + 10
    cut = tc.cutout2d(x, 3, seed=1) == 0
    rows, cols = cut.any(3), cut.any(2)
    assert (cut.sum((2, 3)) == rows.sum(-1) * cols.sum(-1)).all(), "one rectangle per map"
    assert ((rows.sum(-1) >= 2) & (rows.sum(-1) <= 3) & (cols.sum(-1) >= 2) & (cols.sum(-1) <= 3)).all()
    assert cols[..., 7:].any(), "centres across the whole width"
    dropped = (tc.drop_block2d(x, 0.2, 3, seed=2) == 0).double()
    assert 0 < dropped.mean() < 0.5
    whole = -F.max_pool2d(-dropped, 3, 1)  # 1 where a 3x3 square inside the map is all dropped
    assert torch.equal(F.max_pool2d(F.pad(whole, (2, 2, 2, 2)), 3, 1), dropped), "a union of whole blocks"
