"""Checking results against a reference: the one tolerance table, shared by the tests and the benchmark."""

from __future__ import annotations

import torch


def tolerance(dtype: torch.dtype, device: torch.device | str) -> float:
    """Allowed error relative to the reference's largest magnitude, by dtype.

    float32 is near-exact except when TF32 tensor cores are allowed (a GPU with
    torch.backends.cudnn.allow_tf32); 16-bit results carry their own rounding (fp16: 2^-11, bf16: 2^-8)
    on top of float32 accumulation.
    """
    if dtype == torch.float32:
        return 5e-3 if torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32 else 2e-5
    return {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]


def mismatch(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> str | None:
    """None when `actual` matches the reference `expected`: same shape, no NaN the reference lacks (an
    unwritten output shows as NaN), max error within tol * the reference's largest magnitude. Otherwise
    one line saying what is wrong."""
    if actual.shape != expected.shape:
        return f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().to(device=expected.device, dtype=expected.dtype)
    expected = expected.detach()
    nans = int(actual.isnan().sum()) - int(expected.isnan().sum())
    if nans > 0:
        return f"{what}: {nans} NaN elements (unwritten output?)"
    if actual.numel() == 0:
        return None
    scale = max(expected.abs().max().item(), 1e-6)
    err = (actual - expected).abs().max().item()
    return None if err <= tol * scale else f"{what}: max error {err:.3g} > {tol:.1g} x {scale:.3g}"


def model_mismatch(actual: torch.Tensor, unconverted: torch.Tensor, reference: torch.Tensor, tol: float,
                   what: str) -> str | None:
    """Check a whole network's result (a converted model's output or one parameter's gradient): None when its
    error against `reference` (the unconverted model in higher precision) is within tol, or within twice
    the error of `unconverted` (the unconverted model in the same dtype), which may be larger after many
    layers of 16-bit rounding. Otherwise one line saying what is wrong."""
    reference = reference.detach()
    scale = max(reference.abs().max().item(), 1e-6) if reference.numel() else 1.0
    eager_error = (unconverted.detach().to(reference) - reference).abs().max().item() / scale \
        if reference.numel() and unconverted.shape == reference.shape else 0.0
    return mismatch(actual, reference, max(tol, 2 * eager_error), what)


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Random running statistics and affine parameters in every BatchNorm2d of `model`, in place: freshly
    built, a BatchNorm is the identity in eval mode, and folding it would go unchecked."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model
