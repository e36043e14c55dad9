"""Test harness: Triton's interpreter when there is no GPU, NaN-filled outputs, one tolerance table."""

import os

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import tritonconv as tc  # noqa: E402
from tritonconv import testing  # noqa: E402

# Every torch.empty (so every output our launchers allocate) starts as NaN: an element a kernel forgets
# to write shows up as NaN instead of passing by luck. warn_only keeps torch ops without a deterministic
# implementation usable in references.
torch.use_deterministic_algorithms(True, warn_only=True)
assert torch.utils.deterministic.fill_uninitialized_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> float:
    """The tolerance table (tritonconv.testing.tolerance) on the test device."""
    return testing.tolerance(dtype, DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Compare a result with a float64 reference: no NaN, error within tolerance(dtype)."""
    problem = testing.mismatch(actual.cpu(), expected.double().cpu(), tolerance(dtype), what)
    assert problem is None, problem


def rand(*shape: int, dtype: torch.dtype = torch.float32, channels_last: bool = False,
         requires_grad: bool = False) -> torch.Tensor:
    """Random normal test data on the test device, optionally channels_last."""
    t = torch.randn(*shape, dtype=torch.float64).to(DEVICE, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def run_every_kernel(device: torch.device | str = DEVICE) -> None:
    """Forward and backward of every public op on tiny inputs on `device`, so every registered kernel
    launches."""
    x = rand(2, 4, 6, 6).to(device).requires_grad_()
    w = lambda *shape: rand(*shape).to(device).requires_grad_()  # noqa: E731
    calls = [
        lambda: tc.conv2d(x, w(6, 2, 3, 3), w(6), padding=1, groups=2),
        lambda: tc.depthwise_conv2d(x, w(4, 1, 3, 3), padding=1),
        lambda: tc.pointwise_conv2d(x, w(5, 4, 1, 1), activation="relu"),
        lambda: tc.depthwise_separable_conv2d(x, w(4, 1, 3, 3), w(5, 4, 1, 1), padding=1, activation="silu"),
        lambda: tc.dropout(x, 0.3), lambda: tc.spatial_dropout2d(x, 0.3), lambda: tc.drop_block2d(x, 0.3, 3),
        lambda: tc.cutout2d(x, 2), lambda: tc.max_pool2d(x, 3, 2, 1),
        lambda: tc.max_pool2d_dropout(x, 2, p=0.3), lambda: tc.max_pool2d_dropout(x, 2, p=0.3, training=False),
    ]
    for call in calls:
        call().float().sum().backward()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
