"""How the benchmark checks a call before its time counts.

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
from typing import TYPE_CHECKING, Callable, Iterator

import torch
import torch.nn.functional as F

from tritonconv.testing import mismatch, tolerance

if TYPE_CHECKING:
    from .adapters import Case, MaskOp, Op

# Seed of every check's random op call (an explicit seed must reproduce its output).
CHECK_SEED = 1234

Tensors = dict[str, torch.Tensor]
Provider = Callable[["Case", Tensors, "int | None"], torch.Tensor]


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


# ---------------------------------------------------------------------------------------------------------
# Check procedures, one per kind of op.
# ---------------------------------------------------------------------------------------------------------

def check_against_reference(op: "Op", case: "Case", t: Tensors, provider: Provider,
                              backward: bool) -> tuple[list[str], list[str]]:
    """(forward failures, backward failures) of `provider` on these inputs, against PyTorch's op on
    upcast copies. `t`'s tensors require grad when `backward`."""
    x = t["x"]
    ref_dtype, tol = reference_dtype(x.device), tolerance(x.dtype, x.device)
    ref_in = {name: v.detach().to(ref_dtype).requires_grad_(backward) for name, v in t.items()}
    with ieee_float32():
        ref = op.theirs(case, ref_in)
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


def _seeded_call(case: "Case", t: Tensors, provider: Provider) -> tuple[torch.Tensor, list[str]]:
    """A random op's output with the explicit seed CHECK_SEED (outputs poisoned), and the failures seen:
    a second call with the same seed gives another output, or elements were left unwritten (NaN)."""
    with poisoned_outputs():
        y = provider(case, t, CHECK_SEED)
        with torch.no_grad():
            again = provider(case, t, CHECK_SEED)
    failures = [] if torch.equal(y, again) else [f"seed={CHECK_SEED} twice gave different outputs"]
    nans = int(y.detach().isnan().sum())
    if nans:
        failures.append(f"forward: {nans} NaN elements (unwritten output?)")
    return y, failures


def _backward(y: torch.Tensor) -> torch.Tensor:
    """Backpropagate a random normal dy (in y's dtype, outputs poisoned) through y; returns dy."""
    dy = torch.randn(y.shape, device=y.device, dtype=torch.float32).to(y.dtype)
    with poisoned_outputs():
        y.backward(dy)
    return dy


def check_mask(op: "MaskOp", case: "Case", t: Tensors, provider: Provider,
               backward: bool) -> tuple[list[str], list[str]]:
    """(forward failures, backward failures) of a random op whose output is x times a mask of 0 and one
    scale: p=0 is the identity (when the op has p), an explicit seed reproduces the output, survivors
    carry exactly `op.scale`, the dropped set passes `op.structure`, and dx = dy through the same mask."""
    x = t["x"]
    tol = tolerance(x.dtype, x.device)
    forward = []
    if op.has_p:
        with torch.no_grad():
            y0 = provider(dataclasses.replace(case, p=0.0), t, CHECK_SEED)
        if not torch.equal(y0, x):
            forward.append("p=0 does not return the input unchanged")
    y, problems = _seeded_call(case, t, provider)
    forward += problems
    out = y.detach()
    if out.isnan().any():
        return forward, []
    dropped = out == 0
    s = op.scale(case, dropped)
    ref_dtype = reference_dtype(x.device)
    kept = ~dropped
    forward += compare(out[kept], x.detach()[kept].to(ref_dtype) * s, tol, f"survivors (scale {s:.4g})")
    forward += op.structure(case, dropped)
    if not backward or forward:
        return forward, []
    dy = _backward(y)
    if x.grad is None:
        return forward, ["dx: no gradient"]
    expected = torch.where(dropped, 0.0, dy.to(ref_dtype) * s)
    return forward, compare(x.grad, expected, tol, "dx (the forward's mask and scale)")


def check_max_pool_dropout(case: "Case", t: Tensors, provider: Provider,
                           backward: bool) -> tuple[list[str], list[str]]:
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
    y, problems = _seeded_call(case, t, provider)
    forward += problems
    out = y.detach()
    if out.isnan().any():
        return forward, []
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
    dy = _backward(y)
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
