"""The GPU's configurations, checked on the CPU: every kernel run in the interpreter with the
configuration the dispatcher's heuristic picks for a GPU (interpreter=False), and with a deterministic
sample of its tuning space, so the tiles, split factors and code paths a GPU runs (64/128/256-wide
tiles, GROUP_M ordering across a group boundary, SPLIT_K > 1, ragged tail tiles of wide blocks) are
checked for correctness somewhere.

Shapes are just large enough for several tiles with ragged tails under the GPU heuristic: 10 x 13 = 130
output pixels are three 64-row tiles, the last ragged; 20 input channels under a 32-wide reduction
step; 70 output channels over two 64-wide tiles; depthwise and pooling tiles cut the plane and the
channels unevenly. One conv case is larger (9 row tiles) for GROUP_M's ordering across a group boundary
and a split weight-gradient reduction. Every op runs forward and backward in every dtype and layout,
with the GPU heuristic, and in three of the six combinations with a sample of each kernel's (pruned)
tuning space drawn by the dtype and layout: sampled, not swept. num_warps
and num_stages do nothing in the interpreter; every other meta-parameter does.
"""

from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import DTYPES, assert_close, rand
from test_pooling import _kept_units, _masked_max_pool, _weighted_pool
from tritonconv import dispatch

N, C, H, W, F_OUT = 1, 20, 10, 13, 70


def space_sample(spec: dispatch.KernelSpec, problem: dispatch.Problem, draw: int) -> dispatch.Config:
    """Configuration number (draw * 7919 + crc32(kernel name)) mod size of the kernel's tuning space as
    the tuner sees it (pruned for the problem), less splits over 4: a 64-way split of these small
    reductions only adds empty programs, thousands of them in the interpreter."""
    space = [c for c in dispatch.prune(problem, spec.space(problem)) if c.get("SPLIT_K", 1) <= 4]
    return space[(draw * 7919 + zlib.crc32(spec.name.encode())) % len(space)]


@pytest.fixture
def gpu_configs(monkeypatch, request):
    """Make every kernel's interpreter configuration the GPU's: its heuristic with interpreter=False
    ("heuristic"), or a sample of its tuning space ("space": `space_sample`, drawn by the test's
    dtype and layout, so each of them meets other configurations). Returns the (kernel, config) pairs
    launched."""
    mode = request.param
    params = request.node.callspec.params
    draw = DTYPES.index(params.get("dtype", torch.float32)) * 2 + (params.get("layout") == "nhwc")
    used = []
    for name in dispatch.kernels():
        spec = dispatch.spec(name)
        if spec.family == "test":
            continue

        def choose(problem, interpreter, spec=spec):
            config = spec.heuristic(problem, False) if mode == "heuristic" else space_sample(spec, problem, draw)
            used.append((spec.name, config))
            return config

        monkeypatch.setitem(dispatch._KERNELS, name, dataclasses.replace(spec, heuristic=choose))
    dispatch.forget()  # plans kept from earlier calls hold other decisions, and would not ask again
    yield used
    dispatch.forget()


def _leaf(*shape, dtype, channels_last=False, requires_grad=True):
    return rand(*shape, dtype=dtype, channels_last=channels_last, requires_grad=requires_grad)


def _compare(out, grads, refs, ref_grads, dtype):
    assert_close(out, refs, dtype, "forward")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if r is not None:
            assert_close(g, r, dtype, f"gradient {i}")


def _run(ours, theirs, leaves, dtype):
    """Forward and backward against float64, for the gradients of the leaves that require grad."""
    refs = [t.detach().double().requires_grad_(t.requires_grad) for t in leaves]
    y, ref = ours(*leaves), theirs(*refs)
    dy = rand(*ref.shape, dtype=dtype)
    y.backward(dy)
    ref.backward(dy.double())
    _compare(y, [t.grad for t in leaves], ref, [r.grad for r in refs], dtype)


def conv(dtype, cl):
    leaves = [_leaf(N, C, H, W, dtype=dtype, channels_last=cl), _leaf(F_OUT, C, 3, 3, dtype=dtype),
              _leaf(F_OUT, dtype=dtype)]
    _run(lambda x, w, b: tc.conv2d(x, w, b, 1, 2, 2), lambda x, w, b: F.conv2d(x, w, b, 1, 2, 2), leaves, dtype)


def depthwise(dtype, cl):
    # Multiplier 2 (the input gradient gathers per stride phase), then 1 (it runs the forward kernel on dy).
    for mult in (2, 1):
        leaves = [_leaf(N, C, H, W, dtype=dtype, channels_last=cl), _leaf(mult * C, 1, 3, 3, dtype=dtype),
                  _leaf(mult * C, dtype=dtype)]
        _run(lambda x, w, b: tc.conv2d(x, w, b, 1, 1, 1, C), lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, C), leaves,
             dtype)


def pointwise(dtype, cl):
    leaves = [_leaf(N, C, H, W, dtype=dtype, channels_last=cl), _leaf(F_OUT, C, 1, 1, dtype=dtype),
              _leaf(F_OUT, dtype=dtype)]
    _run(lambda x, w, b: tc.pointwise_conv2d(x, w, b, activation="silu"),
         lambda x, w, b: F.silu(F.conv2d(x, w, b)), leaves, dtype)


def separable(dtype, cl):
    # 24 output channels: in channels_last the op fuses up to tritonconv.separable.MAX_FUSED_CHANNELS (64).
    leaves = [_leaf(N, C, H, W, dtype=dtype, channels_last=cl), _leaf(2 * C, 1, 3, 3, dtype=dtype),
              _leaf(24, 2 * C, 1, 1, dtype=dtype)]
    _run(lambda x, wd, wp: tc.depthwise_separable_conv2d(x, wd, wp, None, None, 1, 1, 1, "relu"),
         lambda x, wd, wp: F.conv2d(F.relu(F.conv2d(x, wd, None, 1, 1, 1, C)), wp), leaves, dtype)


def max_pool(dtype, cl):
    _run(lambda x: tc.max_pool2d(x, 3, 1, 1), lambda x: F.max_pool2d(x, 3, 1, 1),
         [_leaf(N, C, H, W, dtype=dtype, channels_last=cl)], dtype)


def pool_dropout(dtype, cl):
    x = _leaf(N, 6, H, W, dtype=dtype, channels_last=cl)  # 6 channels: the weighted mode's rank loop is slow
    keep = _kept_units(x.detach(), 0.3, seed=5)
    _run(lambda t: tc.max_pool2d_dropout(t, 3, 2, 1, p=0.3, seed=5),
         lambda t: _masked_max_pool(t, keep, 3, 2, 1, 1), [x], dtype)
    _run(lambda t: tc.max_pool2d_dropout(t, 3, 2, 1, p=0.3, training=False),
         lambda t: _weighted_pool(t, 3, 2, 1, 1, 0.3), [_leaf(N, 6, H, W, dtype=dtype, channels_last=cl)], dtype)


def dropouts(dtype, cl):
    """Masks depend only on (seed, element): every op equals x * (its own mask) / (1 - p) where the mask
    is read off an all-ones input, with the same seed, and the gradient applies that mask to dy."""
    x = _leaf(N, C, H, W, dtype=dtype, channels_last=cl)
    ones = torch.ones_like(x.detach())
    for op, scale in ((lambda t: tc.dropout(t, 0.3, seed=1), 1 / 0.7), (lambda t: tc.spatial_dropout2d(t, 0.3, seed=1),
                                                                        1 / 0.7),
                      (lambda t: tc.cutout2d(t, 9, seed=1), 1.0)):
        mask = (op(ones) != 0).double()
        assert 0 < mask.mean() < 1
        x.grad = None
        _run(op, lambda t, mask=mask, scale=scale: t * mask * scale, [x], dtype)
    kept = (tc.drop_block2d(ones, 0.2, 5, seed=2) != 0).double()
    assert 0 < kept.mean() < 1
    x.grad = None
    _run(lambda t: tc.drop_block2d(t, 0.2, 5, seed=2), lambda t: t * kept * (kept.numel() / kept.sum()), [x], dtype)


OPS = {"conv": conv, "depthwise": depthwise, "pointwise": pointwise, "separable": separable, "max_pool": max_pool,
       "pool_dropout": pool_dropout, "dropouts": dropouts}
# The GPU heuristic in both layouts for float32 and 16-bit: float16 NCHW and bfloat16 channels_last (the
# heuristics decide by element size, and the interpreter runs both 16-bit types alike; bfloat16's bit
# widening is inline PTX, which only the static checks compile); tuning-space samples in three of the six,
# each dtype once and both layouts (the draw differs per op through the kernel names).
CASES = [(torch.float32, "nchw", "heuristic"), (torch.float32, "nhwc", "heuristic"), (torch.float16, "nchw", "heuristic"),
         (torch.bfloat16, "nhwc", "heuristic"), (torch.float32, "nchw", "space"), (torch.float16, "nhwc", "space"),
         (torch.bfloat16, "nchw", "space")]


@pytest.mark.parametrize("dtype,layout,gpu_configs", [pytest.param(*case, id=f"{str(case[0])[6:]}-{case[1]}-{case[2]}")
                                                      for case in CASES], indirect=["gpu_configs"])
@pytest.mark.parametrize("op", list(OPS))
def test_gpu_configuration(op, dtype, layout, gpu_configs):
    OPS[op](dtype, layout == "nhwc")
    expected = KERNELS[op]
    if op == "separable" and layout == "nchw":
        # NCHW does not fuse (tritonconv.separable._fuses): our depthwise then pointwise ops run.
        expected = expected - {"separable_forward"} | {"depthwise_forward", "pointwise_forward"}
    assert {name for name, _ in gpu_configs} >= expected, "every kernel of the op ran a GPU configuration"


KERNELS = {"conv": {"conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad"},
           "depthwise": {"depthwise_forward", "depthwise_input_grad", "depthwise_input_grad_phases",
                         "depthwise_weight_grad"},
           "pointwise": {"pointwise_forward", "activation_backward", "pointwise_input_grad", "pointwise_weight_grad"},
           "separable": {"separable_forward", "pointwise_input_grad", "pointwise_weight_grad", "activation_backward",
                         "depthwise_input_grad_phases", "depthwise_weight_grad"},
           "max_pool": {"max_pool2d_forward", "max_pool2d_backward"},
           "pool_dropout": {"max_pool2d_forward", "max_pool2d_backward"},
           "dropouts": {"dropout_mask", "drop_block_count", "drop_block_apply"}}


@pytest.mark.parametrize("gpu_configs", ["heuristic"], indirect=True)
def test_group_m_order_across_groups_and_split_k(gpu_configs):
    """576 output pixels: 9 tiles of 64 rows, so the GROUP_M = 8 ordering crosses a group boundary in the
    forward and input gradient, and the weight gradient's 18 reduction steps split in two (SPLIT_K = 2)."""
    leaves = [_leaf(1, 4, 24, 24, dtype=torch.float32), _leaf(8, 4, 3, 3, dtype=torch.float32)]
    _run(lambda x, w: tc.conv2d(x, w, None, 1, 1), lambda x, w: F.conv2d(x, w, None, 1, 1), leaves, torch.float32)
    configs = dict(gpu_configs)
    assert configs["conv2d_forward"]["GROUP_M"] == 8 and configs["conv2d_forward"]["BLOCK_M"] == 64
    assert configs["conv2d_weight_grad"]["SPLIT_K"] == 2


@pytest.mark.parametrize("gpu_configs", ["heuristic"], indirect=True)
def test_depthwise_weight_grad_tap_groups(gpu_configs):
    """A 9x9 depthwise kernel's 81 taps in the GPU heuristic's groups of one kernel row by 8 columns: the
    second group of each row (columns 8-15) runs past the kernel, and its seven phantom taps must neither
    read nor write; the 13-wide output rows leave the last thread's 4 outputs partly past the edge."""
    # The input gradient (the forward kernel on dy, flipped) is test_depthwise_forward_windows's.
    leaves = [_leaf(1, C, H, W, dtype=torch.float32, channels_last=True, requires_grad=False),
              _leaf(C, 1, 9, 9, dtype=torch.float32)]
    _run(lambda x, w: tc.depthwise_conv2d(x, w, None, 1, 4), lambda x, w: F.conv2d(x, w, None, 1, 4, 1, C), leaves,
         torch.float32)
    config = dict(gpu_configs)["depthwise_weight_grad"]
    assert (config["TAPS_H"], config["TAPS_W"], config["OUT_W"]) == (1, 8, 4)


@pytest.mark.parametrize("gpu_configs", ["heuristic"], indirect=True)
@pytest.mark.parametrize("k,dtype,channels_last,out", [(5, torch.bfloat16, True, (1, 7)), (3, torch.float32, False, (2, 7)),
                                                       (9, torch.float32, True, (1, 8)), (7, torch.bfloat16, False, (2, 7)),
                                                       (7, torch.float32, True, (2, 7)), (7, torch.float16, True, (1, 7))],
                         ids=["k5-nhwc", "k3-nchw", "k9-nhwc", "k7-nchw", "k7-nhwc", "k7-nhwc-loop"])
def test_depthwise_forward_windows(gpu_configs, k, dtype, channels_last, out):
    """The GPU heuristic's sliding windows (OUT_H x OUT_W outputs per thread): 7 along a 14-wide row (a
    multiple of 7), on 2 rows for float32 and NCHW (7x7 kernels too, their 7 rows unrolled in the smaller
    tiles of `_forward_config`; float16 channels_last loops over them on one warp), and a 9-tap row (too
    wide to unroll) in runtime chunks of 8 taps, the second with one; 7 rows, so the last row pair has
    one."""
    # At stride 1 the input gradient runs the forward kernel too, flipped; the weight gradients' tap groups
    # are test_depthwise_weight_grad_tap_groups's and test_depthwise.py's.
    leaves = [_leaf(1, C, 7, 14, dtype=dtype, channels_last=channels_last),
              _leaf(C, 1, k, k, dtype=dtype, requires_grad=False)]
    _run(lambda x, w: tc.depthwise_conv2d(x, w, None, 1, k // 2),
         lambda x, w: F.conv2d(x, w, None, 1, k // 2, 1, C), leaves, dtype)
    config = dict(gpu_configs)["depthwise_forward"]
    assert (config["OUT_H"], config["OUT_W"]) == out
