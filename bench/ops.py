"""What the benchmark runs for each public op: a case's tensors, our call and PyTorch's, the minimal FLOPs
and bytes of the call, which PyTorch backend runs it, and the checks that must pass before a time counts.

Deterministic ops (the convolutions, max_pool2d) are compared with PyTorch's op on upcast copies of the
same inputs: float64 on the CPU, float32 with TF32 off on a GPU (float64 convolutions at real-network
sizes would take longer than the whole benchmark). Random ops are checked by invariants that any correct
implementation satisfies, the PyTorch compositions we time against included: survivors carry exactly
the op's scale, the dropped set has the op's structure (whole maps, bs x bs blocks, one rectangle) and
about the right size, p=0 is the deterministic op, an explicit seed reproduces its output, and the
gradient uses the forward's mask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

import tritonconv as tc
from tritonconv.testing import mismatch, tolerance

# Seed of every check's random op call (an explicit seed must reproduce its output).
CHECK_SEED = 1234


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


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def live_pairs(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Pairs (output position, tap) along one axis whose tap reads a real input element, not padding.

    A tap that reads padding multiplies a zero, so it is no work the op must do: counting only these
    pairs keeps the FLOP count (and so the roofline floor) honest at ASPP's rates, where most taps of a
    65x65 map at dilation 36 read padding.
    """
    out = out_size(size, k, stride, padding, dilation)
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - padding + t * dilation < size)


# ---------------------------------------------------------------------------------------------------------
# Checking helpers.
# ---------------------------------------------------------------------------------------------------------

def reference_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU; float32 (with TF32 off) on a GPU, where float64 convolutions are too slow."""
    return torch.float64 if device.type == "cpu" else torch.float32


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 matmuls and convolutions without TF32 inside the block (for references)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Inside the block every torch.empty starts as NaN (torch's deterministic mode, warn-only), so an
    output element a kernel forgets to write shows up as NaN in the check instead of passing by luck."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def torch_seed(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generator of `device` inside the block (nothing when seed is None), restoring it
    after: how a PyTorch composition gets the explicit-seed behaviour of our random ops."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def compare(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> list[str]:
    """[] when `actual` matches `expected` (tritonconv.testing.mismatch), else one line saying what is wrong."""
    problem = mismatch(actual, expected, tol, what)
    return [] if problem is None else [problem]


def rate_within(count: int, total: int, p: float, what: str, slack: float = 0.0) -> list[str]:
    """[] when `count` of `total` independent Bernoulli(p) draws is within 6 standard deviations of
    p * total (plus `slack` * total), else one line: a wrong drop rate, not bad luck (1 in 10^9)."""
    if total == 0:
        return []
    bound = 6 * math.sqrt(p * (1 - p) * total) + 1 + slack * total
    if abs(count - p * total) <= bound:
        return []
    return [f"{what}: {count} of {total} ({count / total:.4f}), expected {p:.4f} +- {bound / total:.4f}"]


Tensors = dict[str, torch.Tensor]
Provider = Callable[["Case", Tensors, "int | None"], torch.Tensor]


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
        """(forward failures, backward failures) of `provider` on these inputs, against PyTorch's op on
        upcast copies. `t`'s tensors require grad when `backward`."""
        x = t["x"]
        ref_dtype, tol = reference_dtype(x.device), tolerance(x.dtype, x.device)
        ref_in = {name: v.detach().to(ref_dtype).requires_grad_(backward) for name, v in t.items()}
        with ieee_float32():
            ref = self.theirs(case, ref_in)
        with poisoned_outputs():
            y = provider(case, t, None)
        forward = compare(y, ref, tol, "forward")
        if y.dtype != x.dtype:
            forward.append(f"output dtype {y.dtype} != input dtype {x.dtype}")
        if (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and not y.is_contiguous(memory_format=torch.channels_last)):
            forward.append("channels_last input gave an output in another memory format")
        if not backward or forward:
            return forward, []
        dy = torch.randn(y.shape, device=x.device, dtype=torch.float32).to(x.dtype)
        with poisoned_outputs():
            y.backward(dy)
        with ieee_float32():
            ref.backward(dy.to(ref_dtype))
        failures = []
        for name, v in t.items():
            if v.grad is None:
                failures.append(f"d{name}: no gradient")
            else:
                failures += compare(v.grad, ref_in[name].grad, tol, f"d{name}")
        return forward, failures


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


def _activation(name: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """PyTorch's function for an activation name of pointwise/separable ops."""
    return {None: lambda v: v, "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu}[name]


class Conv2d(Op):
    name = "conv2d"
    saved = ("x", "weight")

    def shapes(self, case):
        return {"x": (case.n, case.c, case.h, case.w), "weight": (case.f, case.c, case.k, case.k), "bias": (case.f,)}

    def out_shape(self, case):
        o = [out_size(s, case.k, case.stride, case.padding, case.dilation) for s in (case.h, case.w)]
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
        o = [out_size(s, case.k, case.stride, case.padding, case.dilation) for s in (case.h, case.w)]
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
        return (case.n, case.f, *(out_size(s, 1, case.stride, 0, 1) for s in (case.h, case.w)))

    def ours(self, case, t, seed=None):
        return tc.pointwise_conv2d(t["x"], t["weight"], t["bias"], case.stride, case.activation)

    def theirs(self, case, t, seed=None):
        return _activation(case.activation)(F.conv2d(t["x"], t["weight"], t["bias"], case.stride))

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
        o = [out_size(s, case.k, case.stride, case.padding, case.dilation) for s in (case.h, case.w)]
        return (case.n, case.f, *o)

    def ours(self, case, t, seed=None):
        return tc.depthwise_separable_conv2d(
            t["x"], t["depthwise_weight"], t["pointwise_weight"], t["depthwise_bias"], t["pointwise_bias"],
            case.stride, case.padding, case.dilation, case.activation)

    def theirs(self, case, t, seed=None):
        mid = F.conv2d(t["x"], t["depthwise_weight"], t["depthwise_bias"], case.stride, case.padding,
                       case.dilation, case.c)
        return F.conv2d(_activation(case.activation)(mid), t["pointwise_weight"], t["pointwise_bias"])

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
        return (case.n, case.c, *(out_size(s, case.k, case.stride, case.padding, 1) for s in (case.h, case.w)))

    def ours(self, case, t, seed=None):
        return tc.max_pool2d(t["x"], case.k, case.stride, case.padding)

    def theirs(self, case, t, seed=None):
        return F.max_pool2d(t["x"], case.k, case.stride, case.padding)

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, {case.k}x{case.k} s{case.stride} p{case.padding}"


# ---------------------------------------------------------------------------------------------------------
# Random ops.
# ---------------------------------------------------------------------------------------------------------

def torch_drop_block2d(x: torch.Tensor, p: float, block_size: int, eps: float = 1e-6) -> torch.Tensor:
    """torchvision's drop_block2d (training), written out as PyTorch ops: Bernoulli(gamma) seeds on the
    grid where a whole block fits, padded by bs//2, grown into bs x bs blocks by a stride-1 max pool, and
    one scale numel / sum(mask) for the whole tensor. One change: the mask is summed in float32, since a
    float16 sum of a large mask overflows to inf and zeroes the output."""
    if p == 0.0:
        return x
    n, c, h, w = x.shape
    gamma = p * h * w / (block_size ** 2 * (h - block_size + 1) * (w - block_size + 1))
    noise = torch.empty((n, c, h - block_size + 1, w - block_size + 1), dtype=x.dtype, device=x.device)
    noise.bernoulli_(gamma)
    noise = F.pad(noise, [block_size // 2] * 4, value=0)
    noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(block_size, block_size), padding=block_size // 2)
    mask = 1 - noise
    return x * mask * (mask.numel() / (eps + mask.sum(dtype=torch.float32))).to(x.dtype)


def torch_cutout2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cutout as PyTorch ops: in every (sample, channel) map, a size x size square with a uniformly
    random centre, clipped at the border, is zeroed; no rescaling."""
    n, c, h, w = x.shape
    top = torch.randint(0, h, (n, c, 1, 1), device=x.device) - size // 2
    left = torch.randint(0, w, (n, c, 1, 1), device=x.device) - size // 2
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(hole, 0)


def torch_max_pool2d_dropout(x: torch.Tensor, k: int, stride: int, padding: int, p: float) -> torch.Tensor:
    """Max-pooling dropout as PyTorch composes it: a Bernoulli(p) drop mask, masked_fill with -inf,
    max_pool2d, and 0 where a whole window was dropped."""
    drop = torch.empty_like(x, dtype=torch.bool).bernoulli_(p)
    y = F.max_pool2d(x.masked_fill(drop, float("-inf")), k, stride, padding)
    return y.masked_fill(y == float("-inf"), 0.0)


class _MaskOp(Op):
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
        x = t["x"]
        tol = tolerance(x.dtype, x.device)
        forward = []
        if self.has_p:
            with torch.no_grad():
                y0 = provider(dataclasses.replace(case, p=0.0), t, CHECK_SEED)
            if not torch.equal(y0, x):
                forward.append("p=0 does not return the input unchanged")
        with poisoned_outputs():
            y = provider(case, t, CHECK_SEED)
            with torch.no_grad():
                again = provider(case, t, CHECK_SEED)
        if not torch.equal(y, again):
            forward.append(f"seed={CHECK_SEED} twice gave different outputs")
        out = y.detach()
        if out.isnan().any():
            return forward + [f"forward: {int(out.isnan().sum())} NaN elements (unwritten output?)"], []
        dropped = out == 0
        s = self.scale(case, dropped)
        ref_dtype = reference_dtype(x.device)
        kept = ~dropped
        forward += compare(out[kept], x.detach()[kept].to(ref_dtype) * s, tol, f"survivors (scale {s:.4g})")
        forward += self.structure(case, dropped)
        if not backward or forward:
            return forward, []
        dy = torch.randn(out.shape, device=x.device, dtype=torch.float32).to(x.dtype)
        with poisoned_outputs():
            y.backward(dy)
        if x.grad is None:
            return forward, ["dx: no gradient"]
        expected = torch.where(dropped, 0.0, dy.to(ref_dtype) * s)
        return forward, compare(x.grad, expected, tol, "dx (the forward's mask and scale)")


class Dropout(_MaskOp):
    name = "dropout"

    def ours(self, case, t, seed=None):
        return tc.dropout(t["x"], case.p, True, seed=seed)

    def theirs(self, case, t, seed=None):
        with torch_seed(seed, t["x"].device):
            return F.dropout(t["x"], case.p, True)

    def structure(self, case, dropped):
        return rate_within(int(dropped.sum()), dropped.numel(), case.p, "dropped elements")

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, p={case.p:g}"


class SpatialDropout2d(_MaskOp):
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

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, p={case.p:g}"


class DropBlock2d(_MaskOp):
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
        # Pixel (i, j) is covered by cover(i, h) * cover(j, w) seed positions; each is a seed w.p. gamma.
        gamma = case.p * h * w / (bs ** 2 * (h - bs + 1) * (w - bs + 1))

        def cover(size: int) -> torch.Tensor:
            i = torch.arange(size, dtype=torch.float64)
            return (torch.clamp(i, max=size - bs) - torch.clamp(i - bs + 1, min=0) + 1)

        counts = cover(h)[:, None] * cover(w)[None, :]
        expected = n * c * float((1 - (1 - gamma) ** counts).sum())
        seeds = gamma * n * c * (h - bs + 1) * (w - bs + 1)
        # Blocks, not pixels, are independent: a seed drops up to bs^2 pixels.
        bound = 6 * math.sqrt(seeds + 1) * bs ** 2
        got = int(dropped.sum())
        if abs(got - expected) > bound:
            failures.append(f"dropped {got} elements, expected {expected:.0f} +- {bound:.0f} for p={case.p:g}")
        return failures

    def describe(self, case):
        return f"{case.n}x{case.c}x{case.h}x{case.w}, p={case.p:g} block {case.size}"


class Cutout2d(_MaskOp):
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
        """p=0 is max_pool2d; each output is 0 (whole window dropped) or a value of its window; the window's
        max survives with probability 1-p; an explicit seed reproduces the output; each output's gradient
        goes to a unit holding the output's value."""
        x = t["x"]
        xd = x.detach()
        pool = (case.k, case.stride, case.padding)
        forward = []
        with torch.no_grad():
            y0 = provider(dataclasses.replace(case, p=0.0), t, CHECK_SEED)
        if not torch.equal(y0, F.max_pool2d(xd, *pool)):
            forward.append("p=0 differs from F.max_pool2d")
        with poisoned_outputs():
            y = provider(case, t, CHECK_SEED)
            with torch.no_grad():
                again = provider(case, t, CHECK_SEED)
        if not torch.equal(y, again):
            forward.append(f"seed={CHECK_SEED} twice gave different outputs")
        out = y.detach()
        if out.isnan().any():
            return forward + [f"forward: {int(out.isnan().sum())} NaN elements (unwritten output?)"], []
        high, low = F.max_pool2d(xd, *pool), -F.max_pool2d(-xd, *pool)
        selected = out != 0
        outside = int((selected & ((out > high) | (out < low))).sum())
        if outside:
            forward.append(f"{outside} outputs are not a value of their window")
        # The max is kept w.p. 1-p; ties between 16-bit values let a dropped max be matched by a kept copy.
        forward += rate_within(int((out == high).sum()), out.numel(), 1 - case.p, "outputs equal to the window max",
                               slack=0.05 if x.dtype != torch.float32 else 0.0)
        if not backward or forward:
            return forward, []
        dy = torch.randn(out.shape, device=x.device, dtype=torch.float32).to(x.dtype)
        with poisoned_outputs():
            y.backward(dy)
        if x.grad is None:
            return forward, ["dx: no gradient"]
        ref_dtype, tol = reference_dtype(x.device), tolerance(x.dtype, x.device)
        dx, dyr, xr, outr = x.grad.to(ref_dtype), dy.to(ref_dtype), xd.to(ref_dtype), out.to(ref_dtype)
        failures = []
        magnitude = float((dyr.abs() * selected).sum()) + 1e-6
        # Each selected output sends dy to one unit; dropped windows send nothing.
        if abs(float(dx.sum()) - float((dyr * selected).sum())) > tol * magnitude:
            failures.append("dx does not sum to the selected outputs' dy")
        # ... and that unit holds the output's value: sum(dx * x) = sum(dy * y).
        weighted = float((outr.abs() * dyr.abs()).sum()) + 1e-6
        if abs(float((dx * xr).sum()) - float((dyr * outr).sum())) > tol * weighted:
            failures.append("dx goes to units that do not hold the pooled value")
        return forward, failures


OPS: dict[str, Op] = {op.name: op for op in (
    Conv2d(), DepthwiseConv2d(), PointwiseConv2d(), DepthwiseSeparableConv2d(), MaxPool2d(),
    Dropout(), SpatialDropout2d(), DropBlock2d(), Cutout2d(), MaxPool2dDropout())}
