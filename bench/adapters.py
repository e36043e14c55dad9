"""What the benchmark runs for each public op: a case's tensors, our call and PyTorch's, the minimal FLOPs
and bytes of the call, which PyTorch backend runs it, and how it is checked (bench/checking.py) before a
time counts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import tritonconv as tc
from tritonconv._checks import output_size

from . import checking
from .checking import Provider, Tensors, rate_within, torch_seed
from .reference import (ACTIVATIONS, drop_block_probability, torch_cutout2d, torch_drop_block2d,
                             torch_max_pool2d_dropout)


@dataclass(frozen=True)
class Case:
    """One layer of a real network as one call of `op`. Fields the op does not use keep their defaults;
    every field becomes a column of the results table."""

    op: str                  # the tritonconv function, a key of OPS
    layer: str               # what the layer is, e.g. "ASPP 3x3 d=12"
    n: int
    c: int
    h: int
    w: int
    f: int = 0               # output channels: conv2d, pointwise_conv2d, depthwise_separable_conv2d
    k: int = 1               # square kernel or pooling window
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    multiplier: int = 1      # depthwise channel multiplier
    p: float = 0.0           # drop probability of the random ops
    size: int = 0            # DropBlock block size, cutout square side
    activation: str | None = None

    def scaled(self) -> "Case":
        """The same layer shrunk so Triton's interpreter checks it in about a second: batch at most
        2, channels c -> min(c, 3 + c // 128), maps h -> min(h, 7 + h // 32) but wide enough for two
        DropBlock blocks, cutout squares shrunk with the map; kernel, stride, padding, dilation and p kept."""
        def channels(c: int) -> int:
            return min(c, 3 + c // 128)

        def spatial(s: int) -> int:
            return min(s, max(7 + s // 32, 2 * self.size + 1 if self.op == "drop_block2d" else 0))

        h, w = spatial(self.h), spatial(self.w)
        size = max(1, self.size * h // self.h) if self.op == "cutout2d" else self.size
        return dataclasses.replace(self, n=min(self.n, 2), c=channels(self.c), f=channels(self.f) if self.f else 0,
                                   h=h, w=w, size=size)


def live_pairs(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Pairs (output position, tap) along one axis whose tap reads a real input element, not padding.

    A tap that reads padding multiplies a zero, so it is no work the op must do: counting only these
    pairs keeps the FLOP count (and so the roofline floor) honest at ASPP's rates, where most taps of a
    65x65 map at dilation 36 read padding.
    """
    out = output_size(size, k, stride, 2 * padding, dilation)
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - padding + t * dilation < size)


# ---------------------------------------------------------------------------------------------------------
# Ops.
# ---------------------------------------------------------------------------------------------------------

class Op:
    """How to benchmark one public op. Subclasses give shapes, both calls, FLOPs and the backend."""

    name: str = ""
    saved: tuple[str, ...] = ()   # tensors backward must read besides dy (every input gets a gradient)
    random: bool = False

    def shapes(self, case: Case) -> dict[str, tuple[int, ...]]:
        """The input tensors' shapes, in call order; "x" is the (N, C, H, W) activation."""
        raise NotImplementedError

    def out_shape(self, case: Case) -> tuple[int, ...]:
        raise NotImplementedError

    def ours(self, case: Case, t: Tensors, seed: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def theirs(self, case: Case, t: Tensors, seed: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def flops(self, case: Case) -> dict[str, int]:
        """Forward FLOPs by the unit that does them: "tensor" (tensor-core GEMM) or "simt" (fp32 FMA)."""
        return {}

    def torch_backend(self, case: Case, t: Tensors) -> str:
        """What PyTorch runs for `theirs` on these tensors."""
        return "native"

    def describe(self, case: Case) -> str:
        """The call's shape in one short string."""
        return f"{case.n}x{case.c}x{case.h}x{case.w}"

    # -- derived -------------------------------------------------------------------------------------------

    def inputs(self, case: Case, dtype: torch.dtype, channels_last: bool, device: torch.device,
               requires_grad: bool = False) -> Tensors:
        """Random normal inputs (never zeros, which hide unwritten outputs and, for the random ops, look
        like dropped units); 4-D tensors in the requested memory format."""
        tensors = {}
        for name, shape in self.shapes(case).items():
            t = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
            t.masked_fill_(t == 0, 1.0)
            if channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            tensors[name] = t.requires_grad_(requires_grad)
        return tensors

    def bytes(self, case: Case, itemsize: int, backward: bool) -> int:
        """Fewest bytes the call must move: forward reads every input once and writes the output; backward
        reads dy and `saved`, and writes every input's gradient (random masks are regenerated, not read)."""
        numel = {name: math.prod(shape) for name, shape in self.shapes(case).items()}
        out = math.prod(self.out_shape(case))
        total = sum(numel.values()) + out
        if backward:
            total += out + sum(numel[name] for name in self.saved) + sum(numel.values())
        return total * itemsize

    def total_flops(self, case: Case, backward: bool) -> dict[str, int]:
        """FLOPs of forward (and backward: input and weight gradients each cost a forward's)."""
        return {unit: flops * (3 if backward else 1) for unit, flops in self.flops(case).items()}

    def check(self, case: Case, t: Tensors, provider: Provider, backward: bool) -> tuple[list[str], list[str]]:
        """(forward failures, backward failures) of `provider` on these inputs (bench/checking.py)."""
        return checking.check_against_reference(self, case, t, provider, backward)


def _conv_backend(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, padding: int,
                  dilation: int, groups: int) -> str:
    """The backend F.conv2d runs on these tensors, by PyTorch's own rule (torch._C._select_conv_backend,
    present in torch 2.x): "cudnn", or one of PyTorch's native kernels."""
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None:
        return "unknown"
    try:
        backend = select(x, w, b, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups)
    except (RuntimeError, TypeError) as e:
        return f"unknown ({type(e).__name__})"
    names = {"Cudnn": "cudnn", "CudaDepthwise2d": "native depthwise", "Slow2d": "native im2col",
             "SlowDilated2d": "native dilated im2col", "Empty": "none (empty)"}
    return names.get(backend.name, backend.name.lower())


class Conv2d(Op):
    name = "conv2d"
    saved = ("x", "weight")

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w), "weight": (case.f, case.c, case.k, case.k), "bias": (case.f,)}

    def out_shape(self, case):
        o = [output_size(s, case.k, case.stride, 2 * case.padding, case.dilation) for s in (case.h, case.w)]
        return (case.n, case.f, *o)

    def ours(self, case, t, seed=None):
        return tc.conv2d(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation)

    def theirs(self, case, t, seed=None):
        return F.conv2d(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation)

    def flops(self, case):
        taps = (live_pairs(case.h, case.k, case.stride, case.padding, case.dilation)
                * live_pairs(case.w, case.k, case.stride, case.padding, case.dilation))
        return {"tensor": 2 * case.n * case.f * case.c * taps}

    def torch_backend(self, case, t):
        return _conv_backend(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation, 1)

    def describe(self, case):
        return (f"{case.n}x{case.c}x{case.h}x{case.w} -> {case.f}, {case.k}x{case.k} s{case.stride} "
                f"p{case.padding} d{case.dilation}")


class DepthwiseConv2d(Op):
    name = "depthwise_conv2d"
    saved = ("x", "weight")

    def shapes(self, case):
        cm = case.c * case.multiplier
        return {"x": (case.n, case.c, case.h, case.w), "weight": (cm, 1, case.k, case.k), "bias": (cm,)}

    def out_shape(self, case):
        o = [output_size(s, case.k, case.stride, 2 * case.padding, case.dilation) for s in (case.h, case.w)]
        return (case.n, case.c * case.multiplier, *o)

    def ours(self, case, t, seed=None):
        return tc.depthwise_conv2d(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation)

    def theirs(self, case, t, seed=None):
        return F.conv2d(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation, case.c)

    def flops(self, case):
        taps = (live_pairs(case.h, case.k, case.stride, case.padding, case.dilation)
                * live_pairs(case.w, case.k, case.stride, case.padding, case.dilation))
        return {"simt": 2 * case.n * case.c * case.multiplier * taps}

    def torch_backend(self, case, t):
        return _conv_backend(t["x"], t["weight"], t["bias"], case.stride, case.padding, case.dilation, case.c)

    def describe(self, case):
        mult = f" x{case.multiplier}" if case.multiplier > 1 else ""
        return (f"{case.n}x{case.c}x{case.h}x{case.w}{mult}, {case.k}x{case.k} s{case.stride} p{case.padding}"
                + (f" d{case.dilation}" if case.dilation > 1 else ""))


class PointwiseConv2d(Op):
    name = "pointwise_conv2d"
    saved = ("x", "weight")

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w), "weight": (case.f, case.c, 1, 1), "bias": (case.f,)}

    def out_shape(self, case):
        return (case.n, case.f, *(output_size(s, 1, case.stride, 0, 1) for s in (case.h, case.w)))

    def ours(self, case, t, seed=None):
        return tc.pointwise_conv2d(t["x"], t["weight"], t["bias"], case.stride, case.activation)

    def theirs(self, case, t, seed=None):
        return ACTIVATIONS[case.activation](F.conv2d(t["x"], t["weight"], t["bias"], case.stride))

    def flops(self, case):
        n, f, oh, ow = self.out_shape(case)
        return {"tensor": 2 * n * oh * ow * case.c * f}

    def torch_backend(self, case, t):
        return _conv_backend(t["x"], t["weight"], t["bias"], case.stride, 0, 1, 1)

    def describe(self, case):
        return (f"{case.n}x{case.c}x{case.h}x{case.w} -> {case.f}"
                + (f" s{case.stride}" if case.stride > 1 else "") + f", {case.activation or 'linear'}")


class DepthwiseSeparableConv2d(Op):
    name = "depthwise_separable_conv2d"
    saved = ("x", "depthwise_weight", "pointwise_weight")

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w), "depthwise_weight": (case.c, 1, case.k, case.k),
                "pointwise_weight": (case.f, case.c, 1, 1), "depthwise_bias": (case.c,), "pointwise_bias": (case.f,)}

    def out_shape(self, case):
        o = [output_size(s, case.k, case.stride, 2 * case.padding, case.dilation) for s in (case.h, case.w)]
        return (case.n, case.f, *o)

    def ours(self, case, t, seed=None):
        return tc.depthwise_separable_conv2d(
            t["x"], t["depthwise_weight"], t["pointwise_weight"], t["depthwise_bias"], t["pointwise_bias"],
            case.stride, case.padding, case.dilation, case.activation)

    def theirs(self, case, t, seed=None):
        mid = F.conv2d(t["x"], t["depthwise_weight"], t["depthwise_bias"], case.stride, case.padding,
                       case.dilation, case.c)
        return F.conv2d(ACTIVATIONS[case.activation](mid), t["pointwise_weight"], t["pointwise_bias"])

    def flops(self, case):
        n, f, oh, ow = self.out_shape(case)
        taps = (live_pairs(case.h, case.k, case.stride, case.padding, case.dilation)
                * live_pairs(case.w, case.k, case.stride, case.padding, case.dilation))
        return {"simt": 2 * n * case.c * taps, "tensor": 2 * n * oh * ow * case.c * f}

    def torch_backend(self, case, t):
        x = t["x"]
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        mid = torch.empty(self.out_shape(dataclasses.replace(case, f=case.c)), dtype=x.dtype, device=x.device,
                          memory_format=layout)
        depthwise = _conv_backend(x, t["depthwise_weight"], t["depthwise_bias"], case.stride, case.padding,
                                  case.dilation, case.c)
        return depthwise + " + " + _conv_backend(mid, t["pointwise_weight"], t["pointwise_bias"], 1, 0, 1, 1)

    def describe(self, case):
        return (f"{case.n}x{case.c}x{case.h}x{case.w}, {case.k}x{case.k} s{case.stride} p{case.padding}, "
                f"{case.activation or 'linear'} -> {case.f}")


class MaxPool2d(Op):
    name = "max_pool2d"
    saved = ("x",)

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w)}

    def out_shape(self, case):
        return (case.n, case.c, *(output_size(s, case.k, case.stride, 2 * case.padding, 1) for s in (case.h, case.w)))

    def ours(self, case, t, seed=None):
        return tc.max_pool2d(t["x"], case.k, case.stride, case.padding)

    def theirs(self, case, t, seed=None):
        return F.max_pool2d(t["x"], case.k, case.stride, case.padding)

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, {case.k}x{case.k} s{case.stride} p{case.padding}"


# ---------------------------------------------------------------------------------------------------------
# Random ops.
# ---------------------------------------------------------------------------------------------------------
class MaskOp(Op):
    """A random op whose output is x times a mask of 0 and one scale: dropout, spatial dropout, DropBlock,
    cutout."""

    random = True
    has_p = True

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w)}

    def out_shape(self, case):
        return (case.n, case.c, case.h, case.w)

    def scale(self, case: Case, dropped: torch.Tensor) -> float:
        """The factor survivors are multiplied by."""
        return 1.0 / (1.0 - case.p)

    def structure(self, case: Case, dropped: torch.Tensor) -> list[str]:
        """Failures of the dropped set's shape and size."""
        raise NotImplementedError

    def check(self, case, t, provider, backward):
        return checking.check_mask(self, case, t, provider, backward)

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, p={case.p:g}"


class Dropout(MaskOp):
    name = "dropout"

    def ours(self, case, t, seed=None):
        return tc.dropout(t["x"], case.p, True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return F.dropout(t["x"], case.p, True)

    def structure(self, case, dropped):
        return rate_within(int(dropped.sum()), dropped.numel(), case.p, "dropped elements")


class SpatialDropout2d(MaskOp):
    name = "spatial_dropout2d"

    def ours(self, case, t, seed=None):
        return tc.spatial_dropout2d(t["x"], case.p, True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return F.dropout2d(t["x"], case.p, True)

    def structure(self, case, dropped):
        maps = dropped.flatten(2)
        whole = maps.all(dim=2)
        if not torch.equal(whole, maps.any(dim=2)):
            return ["some feature maps are partly dropped (spatial dropout drops whole maps)"]
        return rate_within(int(whole.sum()), whole.numel(), case.p, "dropped maps")


class DropBlock2d(MaskOp):
    name = "drop_block2d"

    def ours(self, case, t, seed=None):
        return tc.drop_block2d(t["x"], case.p, case.size, True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return torch_drop_block2d(t["x"], case.p, case.size)

    def scale(self, case, dropped):
        kept = dropped.numel() - int(dropped.sum())
        return dropped.numel() / kept if kept else 0.0

    def structure(self, case, dropped):
        """The dropped set must be a union of bs x bs squares inside the map (for odd bs: equal to its
        morphological opening by that square), and its size must match the seed rate gamma."""
        bs, (n, c, h, w) = case.size, dropped.shape
        failures = []
        if bs % 2 == 1:
            d = dropped.float()
            eroded = -F.max_pool2d(-d, bs, 1, bs // 2)
            if not torch.equal(F.max_pool2d(eroded, bs, 1, bs // 2), d):
                failures.append(f"the dropped set is not a union of {bs}x{bs} blocks")
        gamma = case.p * h * w / (bs ** 2 * (h - bs + 1) * (w - bs + 1))
        expected = n * c * float(drop_block_probability(h, w, bs, gamma).sum())
        seeds = gamma * n * c * (h - bs + 1) * (w - bs + 1)
        # Blocks, not pixels, are independent: a seed drops up to bs^2 pixels.
        bound = 6 * math.sqrt(seeds + 1) * bs ** 2
        got = int(dropped.sum())
        if abs(got - expected) > bound:
            failures.append(f"dropped {got} elements, expected {expected:.0f} +- {bound:.0f} for p={case.p:g}")
        return failures

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, p={case.p:g} block {case.size}"


class Cutout2d(MaskOp):
    name = "cutout2d"
    has_p = False

    def ours(self, case, t, seed=None):
        return tc.cutout2d(t["x"], case.size, True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return torch_cutout2d(t["x"], case.size)

    def scale(self, case, dropped):
        return 1.0

    def structure(self, case, dropped):
        """Every map's zeroed set is one non-empty rectangle (the clipped square) at most size x size."""
        rows, cols = dropped.any(dim=3), dropped.any(dim=2)
        nr, nc = rows.sum(dim=2), cols.sum(dim=2)
        if int(nr.min()) < 1 or int(nr.max()) > case.size or int(nc.max()) > case.size:
            return [f"zeroed squares of {int(nr.min())}..{int(nr.max())} rows and up to {int(nc.max())} columns "
                    f"for size {case.size} (expected 1..{case.size})"]

        def contiguous(any_: torch.Tensor, count: torch.Tensor) -> bool:
            idx = torch.arange(any_.shape[-1], device=any_.device)
            first = torch.where(any_, idx, any_.shape[-1]).amin(dim=-1)
            last = torch.where(any_, idx, -1).amax(dim=-1)
            return bool((last - first + 1 == count).all())

        rectangle = torch.equal(dropped, rows[..., :, None] & cols[..., None, :])
        if not (rectangle and contiguous(rows, nr) and contiguous(cols, nc)):
            return ["a map's zeroed set is not one rectangle"]
        return []

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, size {case.size}"


class MaxPool2dDropout(MaxPool2d):
    name = "max_pool2d_dropout"
    random = True

    def ours(self, case, t, seed=None):
        return tc.max_pool2d_dropout(t["x"], case.k, case.stride, case.padding, p=case.p, training=True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return torch_max_pool2d_dropout(t["x"], case.k, case.stride, case.padding, case.p)

    def describe(self, case):
        return (f"{case.n}x{case.c}x{case.h}x{case.w}, {case.k}x{case.k} s{case.stride} p{case.padding}, "
                f"p={case.p:g}")

    def check(self, case, t, provider, backward):
        return checking.check_max_pool_dropout(case, t, provider, backward)


OPS: dict[str, Op] = {op.name: op for op in (
    Conv2d(), DepthwiseConv2d(), PointwiseConv2d(), DepthwiseSeparableConv2d(), MaxPool2d(),
    Dropout(), SpatialDropout2d(), DropBlock2d(), Cutout2d(), MaxPool2dDropout())}
