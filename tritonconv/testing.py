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
