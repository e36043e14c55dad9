"""Test harness: Triton's interpreter when there is no GPU, NaN-filled outputs, one tolerance table."""

import os

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

# Every torch.empty (so every output our launchers allocate) starts as NaN: an element a kernel forgets
# to write shows up as NaN instead of passing by luck. warn_only keeps torch ops without a deterministic
# implementation usable in references.
torch.use_deterministic_algorithms(True, warn_only=True)
assert torch.utils.deterministic.fill_uninitialized_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> float:
    """Allowed error relative to the reference's largest magnitude, by dtype (the one table of them).

    float32 is exact-ish except when TF32 tensor cores are allowed (GPU, cudnn.allow_tf32); 16-bit
    results carry their own rounding (fp16: 2^-11, bf16: 2^-8) on top of float32 accumulation.
    """
    if dtype == torch.float32:
        tf32 = DEVICE == "cuda" and torch.backends.cudnn.allow_tf32
        return 5e-3 if tf32 else 2e-5
    return {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Compare a result with a float64 reference: no NaN anywhere, error within tolerance(dtype)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.double().cpu()
    expected = expected.double().cpu()
    assert not actual.isnan().any(), f"{what}: {int(actual.isnan().sum())} NaN elements (unwritten output?)"
    scale = max(expected.abs().max().item(), 1e-6)
    err = (actual - expected).abs().max().item()
    assert err <= tolerance(dtype) * scale, f"{what}: max error {err:.3g} > {tolerance(dtype):.1g} * {scale:.3g}"


def rand(*shape: int, dtype: torch.dtype = torch.float32, channels_last: bool = False,
         requires_grad: bool = False) -> torch.Tensor:
    """Random normal test data on the test device, optionally channels_last."""
    t = torch.randn(*shape, dtype=torch.float64).to(DEVICE, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
