"""Argument checking shared by every op (each failure names the argument and says how to fix it), the
mode launches run in, and the index-width policy of the kernels."""

from __future__ import annotations

import contextlib
import enum
import functools
import os
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from tritonconv import _plans

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Mode(enum.Enum):
    """Where launches run, which decides the dispatcher's answers, the launchers' flags and the tensors
    `check_tensor` accepts."""

    GPU = "gpu"                  # on a CUDA GPU: tuned or cached configurations, GPU flags, CUDA tensors only
    INTERPRETER = "interpreter"  # in Triton's CPU interpreter: the heuristic only, interpreter flags, CPU tensors
    PROBE = "probe"              # recorded, never run (bench.static): GPU decisions and flags on CPU tensors


# TRITON_INTERPRET as it was when tritonconv was imported: Triton reads it when our kernels are decorated
# (importing tritonconv), so setting it later changes nothing; `running_as` is the switch at runtime.
_ENV_MODE = Mode.INTERPRETER if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else Mode.GPU

# Set by `running_as`. A plain module global rather than a contextvars.ContextVar: torch.compile traces
# check_tensor inside the public ops, and dynamo can read (and guard on) a global but not a ContextVar.
_forced_mode: Mode | None = None


def mode() -> Mode:
    """The mode set by the innermost `running_as`, else INTERPRETER when TRITON_INTERPRET was set when
    tritonconv was imported (Triton then runs every kernel in its interpreter), else GPU. The one place
    the mode is decided."""
    return _ENV_MODE if _forced_mode is None else _forced_mode


@contextlib.contextmanager
def running_as(new_mode: Mode) -> Iterator[None]:
    """Run the block in `new_mode`, whatever TRITON_INTERPRET says (bench.static probes in PROBE mode; the
    dispatcher's tests decide as on a GPU). Plans (`tritonconv._plans`) hold the mode's decisions, so
    they are dropped on the way in and out."""
    global _forced_mode
    saved, _forced_mode = _forced_mode, new_mode
    _plans.clear()
    try:
        yield
    finally:
        _forced_mode = saved
        _plans.clear()


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter: launchers pass its flags and the dispatcher
    answers with the heuristic alone."""
    return mode() is Mode.INTERPRETER


def check_tensor(t: object, name: str, ndim: int | None = 4) -> torch.Tensor:
    """Check that `t` is a float32/float16/bfloat16 tensor of rank `ndim` on a device we can run on."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        shape = "(N, C, H, W)" if ndim == 4 else f"rank {ndim}"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; tritonconv supports float32, float16 and bfloat16 "
                        f"(convert with {name}.float() or {name}.half())")
    if t.device.type == "cpu" and mode() is Mode.GPU:
        raise ValueError(f"{name} is a CPU tensor: tritonconv runs on CUDA GPUs. Move it with {name}.cuda(), "
                         "or run on the CPU in Triton's interpreter by setting TRITON_INTERPRET=1 before "
                         "triton is imported")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}; tritonconv runs on CUDA devices")
    return t


def autocast(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors to the autocast dtype when autocast is on for their device, as torch does for
    convolutions (which run in the lower precision), so mixed fp32 weights and fp16 activations work."""
    if not torch._C._is_any_autocast_enabled():
        return tensors
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if first is None or not torch.is_autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def check_same(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """Check that `t` has the dtype and device of `ref`."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                        f"cast with {name}.to({ref_name}.dtype)")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                         f"move it with {name}.to({ref_name}.device)")


def pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    """An int, a one-element sequence (torch expands both) or a pair of ints, each at least `minimum`,
    as a pair."""
    try:
        values = (value, value) if isinstance(value, int) else tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values  # type: ignore[return-value]


def check_int(value: int, name: str, minimum: int) -> int:
    """An int (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
Op = TypeVar("Op", bound=Callable)


def accepts_unbatched(op: Op) -> Op:
    """Let a 2-D op take an unbatched (C, H, W) input, as torch's 2-D ops do: it runs on the batch of one
    (1, C, H, W) and the result (each tensor of it, when there are several) loses that axis again."""

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        input = args[0] if args else kwargs.get("input")
        if not isinstance(input, torch.Tensor) or input.dim() != 3:
            return op(*args, **kwargs)
        if args:
            args = (input.unsqueeze(0), *args[1:])
        else:
            kwargs = {**kwargs, "input": input.unsqueeze(0)}
        out = op(*args, **kwargs)
        return tuple(t.squeeze(0) for t in out) if isinstance(out, tuple) else out.squeeze(0)

    return wrapper  # type: ignore[return-value]


def check_bias(bias: torch.Tensor | None, name: str, channels: int, ref: torch.Tensor, ref_name: str) -> None:
    """Check an optional bias: a (channels,) tensor with the dtype and device of `ref`."""
    if bias is None:
        return
    check_tensor(bias, name, ndim=1)
    check_same(bias, name, ref, ref_name)
    if bias.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},), one per output channel, got {tuple(bias.shape)}")


# Activations an op can fuse into its epilogue (kernels/activations.py); None means the identity.
ACTIVATIONS = ("relu", "relu6", "silu", "gelu")


def check_activation(activation: str | None, name: str = "activation") -> str:
    """The kernel's ACTIVATION constexpr for `activation`: one of ACTIVATIONS, or "none" for None."""
    if activation is None:
        return "none"
    if not isinstance(activation, str):
        raise TypeError(f"{name} must be None or one of {ACTIVATIONS}, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown {name} {activation!r}; valid names are None, "
                         + ", ".join(repr(a) for a in ACTIVATIONS))
    return activation


def check_probability(p: float, name: str = "p") -> float:
    """A probability in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return float(p)


def check_seed(seed: int | None) -> int | None:
    """A dropout seed: None (draw one from torch's generator) or an int in [0, 2^63)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def philox_seed(seed: int | None, device: torch.device) -> torch.Tensor:
    """The Philox key of one random op as a one-element int64 tensor on `device`, which kernels load.

    seed=None draws it from torch's default generator of `device` (so torch.manual_seed reproduces the
    run) without a host synchronisation; an int is used as given. Backward passes keep this tensor, not
    a mask, and regenerate the mask from it.
    """
    if check_seed(seed) is None:
        return torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64, device=device)
    return torch.full((1,), seed, dtype=torch.int64, device=device)


def output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def conv_padding(padding: int | Sequence[int] | str, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resolve `padding` to ((top, left), (total_h, total_w)) as torch.nn.functional.conv2d does.

    "same" pads d*(k-1) in all, the odd element at the bottom/right, so the output keeps the input's size;
    "valid" pads nothing.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f'padding must be an int, a pair, "same" or "valid", got {padding!r}')
        if stride != (1, 1):
            raise ValueError(f'padding="same" needs stride 1 (got stride={stride}); pass explicit padding')
        totals = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
        return (totals[0] // 2, totals[1] // 2), totals
    top_left = pair(padding, "padding", 0)
    return top_left, (2 * top_left[0], 2 * top_left[1])


# ---------------------------------------------------------------------------------------------------------
# Index widths. Tensors over 2^31 elements must index correctly; every kernel follows one of three
# policies, written down here once:
#
# - An INT64 constexpr (the implicit-GEMM conv kernels, kernels/conv.py; DropBlock's apply pass): offsets
#   are int32 unless the launcher passes INT64=needs_int64(...), so the gathers of the inner loop stay
#   32-bit whenever every offset fits (DropBlock: offsets within a sample, one per element and row).
# - int32 pixel numbers with int32_batches (pointwise and separable): pixel indices are int32, since an
#   int64 division costs about 100 registers on sm_90, and every offset is int64; the launcher splits
#   the batch with int32_batches so that no launch numbers 2^31 pixels. The fused separable kernel also
#   takes the INT64 constexpr for its offsets.
# - int64 everywhere else (depthwise, pooling, the other dropouts, activations): offsets (and Philox
#   counters) are int64 from the program's base on.
# ---------------------------------------------------------------------------------------------------------

def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether a kernel over these tensors needs 64-bit offsets: when any reaches 2^30 elements into its
    storage (the margin covers offsets a kernel forms for masked-off lanes, a little past the end)."""
    return any(sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 0) >= 2**30
               for t in tensors)


def int32_batches(batch: int, per_image: int) -> list[slice]:
    """Consecutive slices of a batch, each with fewer than 2^31 output pixels in all (`per_image` each):
    kernels that number pixels in int32 launch once per slice (in practice, once)."""
    step = max(1, (2**31 - 1) // max(per_image, 1))
    return [slice(n0, min(n0 + step, batch)) for n0 in range(0, batch, step)]


def channels_last(*tensors: torch.Tensor) -> bool:
    """Whether an op's output should be channels_last: when any 4-D operand is, as torch's convolution does."""
    return any(t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
               for t in tensors)


def empty_like_layout(shape: Sequence[int], like_channels_last: bool, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """An uninitialised (N, C, H, W) tensor in NCHW or channels_last memory format."""
    fmt = torch.channels_last if like_channels_last else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=fmt)
