"""Dropout, spatial dropout, DropBlock and cutout: semantics (exact where determined, statistical where
random), the Philox key (reproducible, layout- and tiling-independent, regenerated in backward), float64
references built from the observed mask, dtypes, layouts, bad input."""

import dataclasses
import importlib

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import tritonconv as tc
from bench.reference import drop_block_probability
from conftest import DEVICE, DTYPES, assert_close, op_sample, rand
from tritonconv import dispatch
from tritonconv.dropout import _seed_draws, drop_block_apply, drop_block_count
from tritonconv.kernels.dropout import _philox

# The four mask ops with typical arguments, as (name, call(x, **kw)).
OPS = {
    "dropout": lambda x, **kw: tc.dropout(x, 0.3, **kw),
    "spatial": lambda x, **kw: tc.spatial_dropout2d(x, 0.4, **kw),
    "drop_block": lambda x, **kw: tc.drop_block2d(x, 0.3, 3, **kw),
    "cutout": lambda x, **kw: tc.cutout2d(x, 4, **kw),
}


def _within_sigmas(count: float, n: int, prob: float, sigmas: float = 4.5) -> bool:
    """Whether `count` successes in n Bernoulli(prob) trials lie within `sigmas` standard deviations."""
    return abs(count - n * prob) <= sigmas * (n * prob * (1 - prob)) ** 0.5


def _check_layout(t: torch.Tensor, channels_last: bool) -> None:
    assert t.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# ---------------------------------------------------------------------------------------------------------
# Element and spatial dropout.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dropout_forward_backward(dtype, channels_last):
    p = 0.3
    x = rand(2, 12, 13, 15, dtype=dtype, channels_last=channels_last, requires_grad=True)
    y = tc.dropout(x, p)
    keep = y != 0
    assert _within_sigmas(int((~keep).sum()), x.numel(), p), f"drop rate {1 - keep.double().mean():.3f}, p = {p}"
    assert_close(y, x.detach().double() * keep / (1 - p), dtype, "forward")
    _check_layout(y, channels_last)

    dy = rand(*x.shape, dtype=dtype)
    y.backward(dy)
    assert_close(x.grad, dy.double() * keep / (1 - p), dtype, "input grad")
    _check_layout(x.grad, channels_last)


def test_dropout_any_rank_and_broadcast_gradient():
    """A 2-D (batch, features) input is one long map; y.sum().backward() sends a stride-0 gradient."""
    p = 0.6
    x = rand(37, 101, requires_grad=True)
    y = tc.dropout(x, p)
    keep = y != 0
    assert _within_sigmas(int((~keep).sum()), x.numel(), p)
    assert_close(y, x.detach().double() * keep / (1 - p), torch.float32, "forward")
    y.sum().backward()
    assert_close(x.grad, keep.double() / (1 - p), torch.float32, "input grad")


@pytest.mark.parametrize("shape", [(2, 301, 3, 5), (2, 31, 33, 35)], ids=["small", "flat"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spatial_dropout_forward_backward(dtype, channels_last, shape):
    """Whole (n, c) maps are dropped, with rate p over the maps, survivors scaled by 1/(1-p). (NCHW maps of
    33x35 run as one flat run of maps, each tile within two of them, often one kept and one dropped.)"""
    p = 0.4
    x = rand(*shape, dtype=dtype, channels_last=channels_last, requires_grad=True)
    y = tc.spatial_dropout2d(x, p)
    keep = y != 0
    kept_maps = keep.all(dim=(2, 3))
    assert torch.equal(kept_maps, keep.any(dim=(2, 3))), "a map is partly dropped"
    assert _within_sigmas(int((~kept_maps).sum()), kept_maps.numel(), p)
    assert_close(y, x.detach().double() * kept_maps[:, :, None, None] / (1 - p), dtype, "forward")
    _check_layout(y, channels_last)

    dy = rand(*x.shape, dtype=dtype)
    y.backward(dy)
    assert_close(x.grad, dy.double() * kept_maps[:, :, None, None] / (1 - p), dtype, "input grad")


@pytest.mark.parametrize("op", [tc.dropout, tc.spatial_dropout2d])
def test_p_one_drops_everything(op):
    x = rand(2, 3, 5, 6, requires_grad=True)
    y = op(x, 1.0)
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(rand(*y.shape))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("op", ["dropout", "spatial", "cutout"])
def test_dropped_nan_and_inf_give_zero(op):
    """Dropped elements are selected to 0, not multiplied by it: a dropped NaN or inf gives 0 (torch's
    NaN * 0 gives NaN); kept ones stay NaN or inf. The mask is read from a finite input, same seed."""
    call = OPS[op]
    shape = (2, 6, 7, 9)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(2 * 6 * 7 * 3)
    x = specials.reshape(shape).to(DEVICE)
    keep = call(torch.ones(shape, device=DEVICE), seed=11) != 0
    y = call(x, seed=11)
    assert bool((~keep).any()) and bool(keep.any())
    assert torch.equal(y[~keep], torch.zeros_like(y[~keep]))
    assert torch.equal(y[keep].isnan(), x[keep].isnan()) and torch.equal(y[keep].isinf(), x[keep].isinf())


# ---------------------------------------------------------------------------------------------------------
# DropBlock.
# ---------------------------------------------------------------------------------------------------------

def _dilate(seeds: torch.Tensor, block: int) -> torch.Tensor:
    """Blocks grown from a seed grid (..., H-bs+1, W-bs+1): (h, w) is covered when a seed lies in rows
    [h-bs+1, h] and columns [w-bs+1, w] (the block's top-left corner is its seed)."""
    return F.max_pool2d(F.pad(seeds.double(), [block - 1] * 4), block, stride=1) > 0


def _erode(dropped: torch.Tensor, block: int) -> torch.Tensor:
    """Every seed position whose whole block is dropped."""
    return F.avg_pool2d(dropped.double(), block, stride=1) > 1 - 1e-9


def _torchvision_mask(seeds: torch.Tensor, block: int) -> torch.Tensor:
    """torchvision.ops.drop_block2d's block mask from its seed noise (1 = dropped)."""
    noise = F.pad(seeds.double(), [block // 2] * 4)
    return F.max_pool2d(noise, block, stride=1, padding=block // 2) > 0


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_drop_block_forward_backward(dtype, channels_last):
    """Forward and backward against torchvision's formula with the observed mask and one global scale."""
    p, block = 0.25, 3
    x = rand(3, 5, 11, 9, dtype=dtype, channels_last=channels_last, requires_grad=True)
    y = tc.drop_block2d(x, p, block)
    keep = (y != 0).double()
    scale = keep.numel() / (1e-6 + keep.sum())
    assert_close(y, x.detach().double() * keep * scale, dtype, "forward")
    _check_layout(y, channels_last)
    dy = rand(*x.shape, dtype=dtype)
    y.backward(dy)
    assert_close(x.grad, dy.double() * keep * scale, dtype, "input grad")
    _check_layout(x.grad, channels_last)


def test_drop_block_int64_offsets(monkeypatch):
    """The apply pass's 64-bit offsets (INT64, set for tensors over 2^30 elements), forced on a small
    problem: the same output as with int32 offsets, forward and backward."""
    x = rand(2, 3, 10, 7, requires_grad=True)
    dy = rand(*x.shape)
    outputs = []
    for forced in (False, True):
        if forced:
            # The module, not the function tritonconv.dropout that its package attribute names.
            monkeypatch.setattr(importlib.import_module("tritonconv.dropout"), "needs_int64", lambda *tensors: True)
        with dispatch.recording() as decisions:
            y = tc.drop_block2d(x, 0.3, 3, seed=5)
            (grad,) = torch.autograd.grad(y, x, dy)
        assert "drop_block_apply" in {d.problem.kernel for d in decisions}
        outputs.append((y, grad))
    (y, grad), (y64, grad64) = outputs
    assert (y == 0).any() and (y != 0).any()
    assert torch.equal(y64, y) and torch.equal(grad64, grad)


@pytest.mark.parametrize("block,size", [(1, (7, 9)), (2, (9, 8)), (3, (9, 9)), (4, (10, 7)), (5, (13, 11)),
                                        (7, (7, 7))])
def test_drop_block_mask_is_union_of_whole_blocks(block, size):
    """The dropped set is exactly a union of bs x bs squares with top-left corners on the seed grid; for
    odd bs it is what torchvision's padding and pooling make of those seeds. The rate matches gamma."""
    p = 0.3
    h, w = size
    x = rand(2, 96, h, w).abs() + 1
    y = tc.drop_block2d(x, p, block)
    dropped = y == 0
    seeds = _erode(dropped, block)
    assert torch.equal(_dilate(seeds, block), dropped)
    if block % 2:
        assert torch.equal(_torchvision_mask(seeds, block), dropped)
    gamma = p * h * w / (block**2 * (h - block + 1) * (w - block + 1))
    per_map = dropped.double().sum(dim=(2, 3)).flatten()
    expected = drop_block_probability(h, w, block, gamma).sum().item()
    assert abs(per_map.mean().item() - expected) <= 5 * per_map.std().item() / per_map.numel() ** 0.5 + 1e-9, \
        f"mean dropped per map {per_map.mean():.2f}, expected {expected:.2f}"


def test_drop_block_mask_independent_of_tiling(monkeypatch):
    """A tall map walked in several 32-row chunks by one program (the interpreter's tile), and again in
    8-row, 10-column tiles whose row and column halos overlap their neighbours': the same mask, a union
    of whole blocks."""
    x = rand(1, 6, 75, 23).abs() + 1
    first = tc.drop_block2d(x, 0.3, 5, seed=4) == 0
    assert torch.equal(_dilate(_erode(first, 5), 5), first) and first.any()
    small = dispatch.Config.of(num_warps=4, num_stages=1, BLOCK_C=4, BLOCK_W=16, BLOCK_H=8)
    for name in ("drop_block_count", "drop_block_apply"):
        spec = dispatch.spec(name)
        monkeypatch.setitem(dispatch._KERNELS, name, dataclasses.replace(spec, heuristic=lambda *args: small))
    dispatch.forget()
    try:
        assert torch.equal(tc.drop_block2d(x, 0.3, 5, seed=4) == 0, first)
    finally:
        dispatch.forget()


@pytest.mark.parametrize("block,size,p", [(1, (7, 9), 0.3), (3, (37, 11), 0.3), (4, (10, 7), 0.3),
                                          (7, (37, 9), 0.3), (35, (36, 35), 0.9)])
def test_drop_block_mask_same_in_every_layout_dtype_and_tile(block, size, p, monkeypatch):
    """The mask as 32-row bit chunks: maps taller than a chunk (blocks reaching across chunks; bs = 35
    reaches more than a whole chunk past its seed row), odd sizes, odd and even bs. One mask, a union of
    whole blocks, for NCHW, channels_last and a non-contiguous view, in every dtype, under the heuristic's
    tile and a small one (several row blocks with their halos); the backward, with the gradient in the
    other layout, applies the same mask with the same scale."""
    h, w = size
    x = rand(2, 3, h, w).abs() + 1
    reference = tc.drop_block2d(x, p, block, seed=5) == 0
    assert reference.any() and not reference.all()
    assert torch.equal(_dilate(_erode(reference, block), block), reference)
    scale = reference.numel() / (1e-6 + (~reference).double().sum())
    # Every other channel of a wider tensor stored with H and W swapped: strides of no standard layout.
    wide = torch.cat([x, x], dim=1).transpose(2, 3).contiguous().transpose(2, 3)
    for t in (x.contiguous(memory_format=torch.channels_last), wide[:, ::2]):
        t = t.detach().requires_grad_()
        y = tc.drop_block2d(t, p, block, seed=5)
        assert torch.equal(y == 0, reference), t.stride()
        y.backward(torch.ones_like(x))   # NCHW
        assert_close(t.grad, (~reference).double() * scale, torch.float32, "input grad")
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(tc.drop_block2d(x.to(dtype), p, block, seed=5) == 0, reference), dtype
    small = dispatch.Config.of(num_warps=4, num_stages=1, BLOCK_C=2, BLOCK_W=64 if block > 8 else 16, BLOCK_H=8)
    for name in ("drop_block_count", "drop_block_apply"):
        monkeypatch.setitem(dispatch._KERNELS, name, dataclasses.replace(dispatch.spec(name), heuristic=lambda *a: small))
    dispatch.forget()
    try:
        assert torch.equal(tc.drop_block2d(x, p, block, seed=5) == 0, reference)
    finally:
        dispatch.forget()


@pytest.mark.parametrize("gamma,seed_rows", [(0.03, 8), (0.0006, 4)], ids=["16-bit", "32-bit"])
@pytest.mark.parametrize("tile", [None, dict(BLOCK_C=2, BLOCK_W=16, BLOCK_H=8)], ids=["heuristic", "small"])
def test_drop_block_seed_words_match_drawing(tile, gamma, seed_rows, monkeypatch):
    """Pass 1's seed words hold exactly the seeds (one bit per seed-grid position, rows past the grid
    clear), and pass 2 reading them (the forward) writes what pass 2 drawing them again (the backward)
    writes: under the heuristic's tile (the whole 75-row map, three words per column, in the interpreter)
    and under 8-row blocks, whose programs write the words that start in their rows and read words that
    other programs wrote; with 16-bit draws, eight seed rows a Philox call (gamma >= 2^-10), and 32-bit
    draws, four rows a call (a smaller gamma)."""
    if tile is not None:
        for name in ("drop_block_count", "drop_block_apply"):
            monkeypatch.setitem(dispatch._KERNELS, name, dataclasses.replace(
                dispatch.spec(name), heuristic=lambda *a: dispatch.Config.of(4, 1, **tile)))
    dispatch.forget()
    try:
        n, c, h, w, block = 1, 3, 75, 23, 5
        assert _seed_draws(gamma)[0] == seed_rows
        x = rand(n, c, h, w).abs() + 1
        seed = torch.tensor([11], device=DEVICE)
        count, words = drop_block_count(x, seed, block, gamma)(x, seed)
        read = drop_block_apply(x, seed, count, words, block, gamma, False)(x, seed, count, words)
        drawn = drop_block_apply(x, seed, count, None, block, gamma, False)(x, seed, count, None)
    finally:
        dispatch.forget()
    assert torch.equal(read, drawn)
    hs, ws = h - block + 1, w - block + 1
    bits = (words.view(n * c, -1, 1, ws).long() >> torch.arange(32, device=DEVICE)[:, None]) & 1
    seeds = bits.reshape(n, c, -1, ws)
    assert seeds.shape[2] == 96 and not seeds[:, :, hs:].any()
    dropped = read == 0
    assert dropped.any() and not dropped.all()
    assert torch.equal(_dilate(seeds[:, :, :hs], block), dropped)
    assert int(count) == int((~dropped).sum())


def test_drop_block_seed_resolution():
    """Seeds draw 16 bits (eight rows a Philox call) from gamma = 2^-10 up, where rounding gamma to a multiple
    of 2^-16 moves it by at most 1/128 of itself, and 32 bits below; gamma 0 seeds nothing and 1 everything."""
    assert _seed_draws(2**-10) == (8, 64)
    assert _seed_draws(2**-10 * 0.99) == (4, round(2**22 * 0.99))
    assert _seed_draws(1.0) == (8, 2**16) and _seed_draws(0.0) == (4, 0)
    for gamma in (2**-10, 0.0013, 0.0025, 0.01, 0.3):
        rows, bits = _seed_draws(gamma)
        assert rows == 8 and abs(bits / 2**16 - gamma) <= gamma / 128, gamma


@triton.jit
def _philox_pair_kernel(seed_ptr, out_ptr, base, stride):
    counter = base + tl.arange(0, 256).to(tl.int64) * stride
    seed = tl.load(seed_ptr)
    a0, a1, a2, a3 = tl.randint4x(seed, counter)
    b0, b1, b2, b3 = _philox(seed, counter)
    same = (a0 == b0) & (a1 == b1) & (a2 == b2) & (a3 == b3)
    tl.store(out_ptr + tl.arange(0, 256), same.to(tl.int32))


def test_drop_block_philox_is_randint4x():
    """DropBlock's Philox (64-bit products) gives tl.randint4x's words bit for bit: counters past 2^32
    (the high word), negative and large seeds."""
    for seed, base in ((0, 0), (12345, 2**33 + 5), (-7, 3), (2**62 + 99, 2**40)):
        out = torch.zeros(256, dtype=torch.int32, device=DEVICE)
        _philox_pair_kernel[(1,)](torch.tensor([seed], device=DEVICE), out, base, 7919)
        assert int(out.sum()) == 256, seed


def test_drop_block_whole_map_block():
    """bs = H = W: gamma = p, each map is dropped whole with probability p."""
    p = 0.5
    x = rand(2, 256, 5, 5).abs() + 1
    dropped = tc.drop_block2d(x, p, 5) == 0
    maps = dropped.all(dim=(2, 3))
    assert torch.equal(maps, dropped.any(dim=(2, 3)))
    assert _within_sigmas(int(maps.sum()), maps.numel(), p)


# ---------------------------------------------------------------------------------------------------------
# Cutout.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size,h,w", [(3, 9, 10), (4, 9, 10), (5, 33, 35)])
def test_cutout(size, h, w, dtype, channels_last):
    """One clipped size x size square per map, centre uniform; nothing else changes; the gradient is the
    same mask. (NCHW maps of 33x35 run as one flat run of maps, each tile within two of them; fewer of
    them keep the interpreter's time down.)"""
    n, c = 2, 181 if h * w < 1024 else 31
    x = (rand(n, c, h, w, dtype=dtype, channels_last=channels_last).abs() + 1).requires_grad_()
    y = tc.cutout2d(x, size)
    dropped = y == 0
    assert torch.equal(y[~dropped], x.detach()[~dropped])
    _check_layout(y, channels_last)

    # Each map's dropped set is the full rectangle spanned by its rows and columns, of side `size` unless
    # it touches the border.
    rows = dropped.any(dim=3)
    cols = dropped.any(dim=2)
    assert torch.equal(dropped, rows[..., :, None] & cols[..., None, :])
    for lines, extent in ((rows, h), (cols, w)):
        first = lines.double().argmax(dim=-1)
        length = lines.sum(dim=-1)
        last = first + length - 1
        pos = torch.arange(extent)
        assert torch.equal(lines, (pos >= first[..., None]) & (pos <= last[..., None]))
        clipped = (first == 0) | (last == extent - 1)
        assert bool(((length == size) | (clipped & (length < size))).all())

    # The square covers row r when its centre lies in [r - size + 1 + size//2, r + size//2]: a uniform
    # centre gives each row (and column) a known frequency of being cut.
    for lines, extent in ((rows, h), (cols, w)):
        pos = torch.arange(extent)
        covering = torch.clamp(pos + size // 2, max=extent - 1) - torch.clamp(pos - size + 1 + size // 2, min=0) + 1
        freq = lines.reshape(-1, extent).double().sum(dim=0)
        for count, prob in zip(freq.tolist(), (covering.double() / extent).tolist()):
            assert _within_sigmas(count, n * c, prob, 5)

    dy = rand(n, c, h, w, dtype=dtype)
    y.backward(dy)
    assert_close(x.grad, dy.double() * ~dropped, dtype, "input grad")


# ---------------------------------------------------------------------------------------------------------
# The Philox key: reproducible, seeded, independent of layout, dtype and tiling, never stored.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OPS))
def test_reproducible_under_manual_seed_and_seed(op):
    call = OPS[op]
    x = rand(2, 6, 9, 8).abs() + 1
    torch.manual_seed(1)
    first = call(x)
    second = call(x)
    torch.manual_seed(1)
    assert torch.equal(call(x), first), "torch.manual_seed does not reproduce the mask"
    assert not torch.equal(first, second), "consecutive calls reuse a mask"
    fixed = call(x, seed=1234)
    torch.manual_seed(99)
    assert torch.equal(call(x, seed=1234), fixed), "an explicit seed does not fix the mask"
    assert not torch.equal(call(x, seed=1235), fixed), "different seeds give the same mask"


@pytest.mark.parametrize("op", list(OPS))
def test_mask_independent_of_layout_and_dtype(op):
    """The key is the logical element index: every layout and dtype of one tensor gets one mask."""
    call = OPS[op]
    for shape in ((2, 7, 9, 10), (1, 3, 33, 35)):   # the larger maps run NCHW as one flat run (spatial, cutout)
        x = rand(*shape).abs() + 1
        masks = [call(x.to(dtype).contiguous(memory_format=fmt), seed=7) == 0
                 for dtype in DTYPES for fmt in (torch.contiguous_format, torch.channels_last)]
        assert all(torch.equal(m, masks[0]) for m in masks[1:])


@pytest.mark.parametrize("op,kernels,channels_last,shape", [
    ("dropout", ["dropout_mask"], False, (2, 7, 9, 10)), ("dropout", ["dropout_mask"], True, (2, 7, 9, 10)),
    ("cutout", ["dropout_mask"], False, (2, 7, 9, 10)), ("cutout", ["dropout_mask"], False, (1, 3, 33, 35)),
    ("spatial", ["dropout_mask"], False, (1, 5, 33, 35)),
    ("drop_block", ["drop_block_count", "drop_block_apply"], False, (2, 7, 9, 10))])
def test_mask_independent_of_tiling(op, kernels, channels_last, shape, monkeypatch):
    """Autotuning may launch any configuration: the mask must not depend on the tile shape (channels_last
    element dropout: 9x10 maps start inside Philox calls, and a program covers 8 positions; spatial
    dropout's and cutout's 33x35 maps run as one flat run)."""
    call = OPS[op]
    x = rand(*shape, channels_last=channels_last).abs() + 1
    reference = call(x, seed=3)
    for name in kernels:
        spec = dispatch.spec(name)
        small = {"dropout_mask": dict(BLOCK_C=2, BLOCK_P=16),
                 "drop_block_count": dict(BLOCK_C=4, BLOCK_W=8, BLOCK_H=2),
                 "drop_block_apply": dict(BLOCK_C=2, BLOCK_W=16, BLOCK_H=3)}[name]
        monkeypatch.setitem(dispatch._KERNELS, name, dataclasses.replace(
            spec, heuristic=lambda problem, interpreter, small=small: dispatch.Config.of(4, 1, **small)))
    assert torch.equal(call(x, seed=3), reference)


@pytest.mark.parametrize("op", list(OPS))
def test_backward_keeps_seed_not_mask(op):
    """Saved tensors hold one seed (and DropBlock's count), not a mask; the backward regenerates the mask
    even when other random ops run in between."""
    x = (rand(2, 5, 8, 9).abs() + 1).requires_grad_()
    y = OPS[op](x)
    assert all(t.numel() == 1 for t in y.grad_fn.saved_tensors)
    torch.rand(100)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0)


@pytest.mark.parametrize("op", list(OPS))
def test_identity_without_launch_when_not_training(op):
    x = rand(2, 3, 6, 6)
    state = torch.get_rng_state()
    assert OPS[op](x, training=False) is x
    assert torch.equal(torch.get_rng_state(), state), "eval mode consumed random numbers"


@pytest.mark.parametrize("op", [tc.dropout, tc.spatial_dropout2d])
def test_p_zero_is_identity(op):
    x = rand(2, 3, 6, 6)
    assert op(x, 0.0) is x
    assert tc.drop_block2d(x, 0.0, 3) is x


def test_empty_input():
    x = rand(0, 3, 5, 5, requires_grad=True)
    for call in OPS.values():
        y = call(x)
        assert y.shape == x.shape
        y.sum().backward()


# ---------------------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda x: tc.dropout(x, -0.1), ValueError, r"p must be in \[0, 1\]"),
    (lambda x: tc.spatial_dropout2d(x, 1.5), ValueError, r"p must be in \[0, 1\]"),
    (lambda x: tc.drop_block2d(x, "0.5", 3), TypeError, "p must be a float"),
    (lambda x: tc.drop_block2d(x, 0.1, 0), ValueError, "block_size must be between 1"),
    (lambda x: tc.drop_block2d(x, 0.1, 7), ValueError, r"block_size must be between 1 and .* = 6"),
    (lambda x: tc.drop_block2d(x, 0.1, 2.0), TypeError, "block_size must be an int"),
    (lambda x: tc.cutout2d(x, 0), ValueError, "size must be between 1"),
    (lambda x: tc.cutout2d(x, 7), ValueError, "size must be between 1"),
    (lambda x: tc.spatial_dropout2d(x[0, 0, 0]), ValueError, r"input must be \(N, C, H, W\)"),
    (lambda x: tc.drop_block2d(x[0], 0.1, 3), ValueError, r"input must be \(N, C, H, W\)"),
    (lambda x: tc.cutout2d(x[0], 3), ValueError, r"input must be \(N, C, H, W\)"),
    (lambda x: tc.dropout(x.double()), TypeError, "input has dtype"),
    (lambda x: tc.dropout(x.int()), TypeError, "input has dtype"),
    (lambda x: tc.dropout(x.tolist()), TypeError, "input must be a torch.Tensor"),
    (lambda x: tc.dropout(x, seed="1"), TypeError, "seed must be an int"),
    (lambda x: tc.dropout(x, seed=True), TypeError, "seed must be an int"),
    (lambda x: tc.cutout2d(x, 3, seed=-1), ValueError, r"seed must be in \[0, 2\*\*63\)"),
    (lambda x: tc.dropout(x, 0.5, training=False, seed=2**63), ValueError, "seed must be in"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(rand(2, 3, 6, 7))


def test_cpu_tensor_outside_interpreter():
    with tc._checks.running_as(tc._checks.Mode.GPU), pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        tc.spatial_dropout2d(torch.randn(1, 2, 4, 4))


def test_torch_compile_fullgraph_matches_eager():
    """The ops are torch.library ops with fake implementations: torch.compile(fullgraph=True) traces them
    and, with explicit seeds, gives eager's masks, forward and backward."""
    def chain(x):
        y = tc.dropout(x, 0.2, seed=1)
        y = tc.spatial_dropout2d(y, 0.3, seed=2)
        y = tc.drop_block2d(y, 0.3, 3, seed=3)
        return tc.cutout2d(y, 3, seed=4)

    x = rand(2, 4, 9, 8, channels_last=True, requires_grad=True)
    compiled = torch.compile(chain, fullgraph=True)
    out = compiled(x)
    assert torch.equal(out, chain(x))
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    chain(x).sum().backward()
    assert torch.equal(grad, x.grad)


@op_sample("dropout")
def _dropout_sample() -> torch.Tensor:
    return tc.dropout(rand(2, 4, 6, 6, requires_grad=True), 0.3)


@op_sample("spatial_dropout2d")
def _spatial_sample() -> torch.Tensor:
    return tc.spatial_dropout2d(rand(2, 4, 6, 6, requires_grad=True), 0.3)


@op_sample("drop_block2d")
def _drop_block_sample() -> torch.Tensor:
    return tc.drop_block2d(rand(2, 4, 6, 6, requires_grad=True), 0.3, 3)


@op_sample("cutout2d")
def _cutout_sample() -> torch.Tensor:
    return tc.cutout2d(rand(2, 4, 6, 6, requires_grad=True), 2)
