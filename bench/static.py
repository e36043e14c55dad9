"""Static GPU checks without a GPU: compile every kernel in every configuration the dispatcher can choose,
for Hopper (sm_90) or Ampere (sm_80), on the CPU, and read what the cubin says.

    python -m bench.static [--target sm_90 [sm_80]] [--out DIR] [--space heuristic|full] [--quick]
                           [--kernel NAME ...] [--dtype float16 ...] [--also NAME=VALUE ...] [--jobs 2]
                           [--update-rejects]

A kernel can be right in Triton's interpreter and still fail or crawl on a GPU: a configuration that needs
more shared memory than a block may have, registers spilling to local memory, a GEMM that never reaches
the tensor cores. Triton compiles for a named target without a GPU, so all of that shows here.

How it works:

1. Probe (this process). Every entry of PROBES calls a public op, forward and backward, at a real layer's
   shape and dtype. The tensors come from `torch.empty` on the CPU: no kernel runs and their pages are
   never touched, so real sizes cost nothing. While a probe runs, `JITFunction.run` (what
   `kernel[grid](...)` calls) records the launch instead of running it, and `dispatch.config_for`
   records the Problem and answers with the kernel's GPU heuristic. The probes run in PROBE mode
   (`tritonconv._checks.running_as`): `interpreting()` answers False everywhere, so launchers pass their
   GPU flags (no interpreter UPCAST, TF32 as cuDNN would), while `check_tensor` still accepts the CPU
   tensors. Each launch's arguments are specialised as Triton's launcher does on a GPU (an int equal
   to 1 becomes a constant, ints and pointers divisible by 16 are marked so), which gives the exact
   signature a GPU compiles. With `--space full` the probe also calls each launch closure with every
   configuration of the kernel's tuning space, so launchers derive grids and flags as they would; with
   `--also NAME=VALUE`, with the heuristic's configuration so changed, where the tuning space holds it
   (one candidate beside the heuristic, e.g. `--also B_DESCRIPTOR=1`: conv2d_forward's TMA weight loads).
2. Compile (a pool of `--jobs` processes, Triton's on-disk cache making reruns fast): `triton.compile`
   of an ASTSource for GPUTarget("cuda", 90 or 80, 32), then `cuobjdump --dump-resource-usage
   --dump-sass` on the cubin, and ptxas's own log for spill bytes.
3. Report: one CSV row per (target, kernel, dtype, configuration, signature), the shapes that produced it,
   and a verdict; a markdown summary; with `--space full --update-rejects`, the configurations that do
   not compile, exceed shared memory or spill go to tritonconv/static_rejects.json, which the
   dispatcher prunes from its tuning space.

Adding an op: one line in PROBES per representative shape; a GEMM-shaped kernel also goes in
GEMM_KERNELS. A registered kernel that no probe launches is reported (verdict "no-probe") and fails
tests/test_static.py, so no kernel goes unchecked. The command exits with 1 when a kernel has no probe or
a probe fails, and, for the heuristic space, when any configuration is not ok.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import pandas as pd
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.cache import get_cache_manager
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

import tritonconv
from tritonconv import _checks, _plans, dispatch, heuristics
from tritonconv._progress import progress
from tritonconv.static_checks import REJECTS_PATH, REJECT_VERDICTS

from . import OUT
from .report import markdown_table

# ---------------------------------------------------------------------------------------------------------
# What to check.
# ---------------------------------------------------------------------------------------------------------

# Compute capability and the most shared memory one block may use (static + dynamic, with the opt-in):
# 227 KB on H100/H200, 163 KB on A100.
TARGETS = {"sm_90": (90, heuristics.SMEM_PER_BLOCK), "sm_80": (80, 163 * 1024)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Kernels that are matrix products at heart and must reach the tensor cores: HGMMA on sm_90 for 16-bit
# inputs (tests/test_static.py checks it).
GEMM_KERNELS = frozenset({"conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "pointwise_forward",
                          "pointwise_input_grad", "pointwise_weight_grad", "separable_forward"})

Run = Callable[[Callable, torch.dtype], None]


def _empty(*shape: int, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    """An uninitialised CPU tensor that wants a gradient: launches are recorded, never run, so its pages
    are never touched."""
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, memory_format=fmt).requires_grad_()


def _backward(y: torch.Tensor) -> None:
    y.backward(torch.empty_like(y))


def _conv(n: int, c: int, f: int, size: int, k: int, dilation: int = 1, stride: int = 1, bias: bool = False,
          channels_last: bool = False) -> Run:
    """op(x, w, b, stride, padding, dilation) forward and backward: N x C x size x size input, F filters of
    k x k (groups=1), padded to keep the map's size at stride 1."""
    def run(op: Callable, dtype: torch.dtype) -> None:
        x = _empty(n, c, size, size, dtype=dtype, channels_last=channels_last)
        w = _empty(f, c, k, k, dtype=dtype, channels_last=channels_last)
        _backward(op(x, w, _empty(f, dtype=dtype) if bias else None, stride, dilation * (k // 2), dilation))
    return run


def _depthwise(n: int, c: int, size: int, k: int, stride: int = 1, channels_last: bool = False) -> Run:
    """depthwise_conv2d forward and backward: a k x k filter per channel, "same"-style padding."""
    def run(op: Callable, dtype: torch.dtype) -> None:
        x = _empty(n, c, size, size, dtype=dtype, channels_last=channels_last)
        _backward(op(x, _empty(c, 1, k, k, dtype=dtype), _empty(c, dtype=dtype), stride, k // 2))
    return run


def _pointwise(n: int, c: int, f: int, size: int, activation: str, channels_last: bool = False) -> Run:
    """pointwise_conv2d forward and backward, with bias and `activation` in the epilogue."""
    def run(op: Callable, dtype: torch.dtype) -> None:
        x = _empty(n, c, size, size, dtype=dtype, channels_last=channels_last)
        _backward(op(x, _empty(f, c, 1, 1, dtype=dtype), _empty(f, dtype=dtype), activation=activation))
    return run


def _separable(n: int, c: int, f: int, size: int, k: int, activation: str, channels_last: bool = False) -> Run:
    """depthwise_separable_conv2d forward and backward: k x k depthwise, `activation`, 1x1 to F channels."""
    def run(op: Callable, dtype: torch.dtype) -> None:
        x = _empty(n, c, size, size, dtype=dtype, channels_last=channels_last)
        _backward(op(x, _empty(c, 1, k, k, dtype=dtype), _empty(f, c, 1, 1, dtype=dtype), _empty(c, dtype=dtype),
                     _empty(f, dtype=dtype), padding=k // 2, activation=activation))
    return run


def _map(n: int, c: int, size: int, *args: object, channels_last: bool = False, **kwargs: object) -> Run:
    """op(x, *args, **kwargs) forward and backward on one N x C x size x size map: dropouts, pooling."""
    def run(op: Callable, dtype: torch.dtype) -> None:
        _backward(op(_empty(n, c, size, size, dtype=dtype, channels_last=channels_last), *args, **kwargs))
    return run


@dataclasses.dataclass(frozen=True)
class Probe:
    """One representative call of the public op tritonconv.<op>, run once per dtype."""

    op: str
    shape: str
    run: Run
    deterministic: bool = False  # under torch.use_deterministic_algorithms(True): split-K sums in a workspace


# Real layers (issues 2 and 3), few so that CI stays fast: for the GEMM-shaped ops one shape large enough
# for the heuristics' big-tile branch and one small, between them both layouts.
PROBES = [
    Probe("conv2d", "deeplab 16x256x65x65 3x3 d2 nhwc", _conv(16, 256, 256, 65, 3, dilation=2, channels_last=True)),
    Probe("conv2d", "aspp 2x2048x65x65 3x3 d24 bias nchw", _conv(2, 2048, 256, 65, 3, dilation=24, bias=True)),
    Probe("conv2d", "deeplab 16x256x65x65 3x3 d2 nhwc deterministic",
          _conv(16, 256, 256, 65, 3, dilation=2, channels_last=True), deterministic=True),
    Probe("depthwise_conv2d", "mobilenetv2 128x144x56x56 3x3 s2 nhwc",
          _depthwise(128, 144, 56, 3, 2, channels_last=True)),
    Probe("depthwise_conv2d", "convnext 8x384x14x14 7x7 nchw", _depthwise(8, 384, 14, 7)),
    # issue 14's targets, channels_last (after the first nhwc probe, so --quick compiles none of them)
    Probe("depthwise_conv2d", "efficientnet-b0 128x240x28x28 5x5 nhwc", _depthwise(128, 240, 28, 5, channels_last=True)),
    Probe("depthwise_conv2d", "convnext 32x192x28x28 7x7 nhwc", _depthwise(32, 192, 28, 7, channels_last=True)),
    Probe("depthwise_conv2d", "replknet 8x128x56x56 31x31 nhwc", _depthwise(8, 128, 56, 31, channels_last=True)),
    Probe("pointwise_conv2d", "32x256x28x28 ->256 relu6 nhwc",
          _pointwise(32, 256, 256, 28, "relu6", channels_last=True)),
    Probe("pointwise_conv2d", "8x672x14x14 ->112 silu nchw", _pointwise(8, 672, 112, 14, "silu")),
    Probe("depthwise_separable_conv2d", "32x144x56x56 3x3 ->24 relu6 nhwc",
          _separable(32, 144, 24, 56, 3, "relu6", channels_last=True)),
    Probe("depthwise_separable_conv2d", "8x512x14x14 3x3 ->512 relu nchw", _separable(8, 512, 512, 14, 3, "relu")),
    Probe("dropout", "16x256x65x65 p0.1 nhwc", _map(16, 256, 65, 0.1, channels_last=True)),
    Probe("spatial_dropout2d", "16x256x65x65 p0.1 nchw", _map(16, 256, 65, 0.1)),
    # issue 15's dropout target in NCHW (after spatial dropout's NCHW probe, so --quick compiles it not)
    Probe("dropout", "16x256x65x65 p0.1 elementwise nchw", _map(16, 256, 65, 0.1)),
    Probe("drop_block2d", "16x256x65x65 p0.1 bs7 nhwc", _map(16, 256, 65, 0.1, 7, channels_last=True)),
    # torchvision's drop_block2d users pass NCHW
    Probe("drop_block2d", "16x256x65x65 p0.1 bs7 nchw", _map(16, 256, 65, 0.1, 7)),
    Probe("cutout2d", "16x256x65x65 16 nchw", _map(16, 256, 65, 16)),
    Probe("max_pool2d", "resnet 32x64x112x112 3x3 s2 nhwc", _map(32, 64, 112, 3, 2, 1, channels_last=True)),
    Probe("max_pool2d_dropout", "32x64x112x112 2x2 p0.3 nchw", _map(32, 64, 112, 2, p=0.3)),
    # issue 15's overlapping windows and the eval mode (after the first probe of each layout, so --quick
    # compiles none of them)
    Probe("max_pool2d_dropout", "32x64x112x112 3x3 s2 p0.3 nhwc", _map(32, 64, 112, 3, 2, 1, p=0.3, channels_last=True)),
    Probe("max_pool2d_dropout", "32x64x56x56 3x3 s1 p0.3 nchw", _map(32, 64, 56, 3, 1, 1, p=0.3)),
    Probe("max_pool2d_dropout", "32x64x56x56 3x3 s1 p0.3 nhwc", _map(32, 64, 56, 3, 1, 1, p=0.3, channels_last=True)),
    Probe("max_pool2d_dropout", "32x64x112x112 3x3 s2 p0.3 eval nchw", _map(32, 64, 112, 3, 2, 1, p=0.3, training=False)),
]

# ---------------------------------------------------------------------------------------------------------
# Probing: record launches instead of running them.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded kernel launch, specialised as Triton's launcher would on a GPU."""

    kernel: str                  # registered name (Problem.kernel)
    shape: str                   # the probe's label
    problem: dispatch.Problem
    config: dispatch.Config      # the configuration launched (the heuristic's pick, or one of the space)
    heuristic: bool              # whether `config` is what the dispatcher picks on a GPU
    fn: str                      # "module:name" of the @triton.jit function
    signature: tuple[tuple[str, str], ...]     # parameter -> Triton type ("constexpr" for constants)
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[int, ...]   # indices of parameters specialised as divisible by 16
    options: tuple[tuple[str, object], ...]    # compile options: num_warps, num_stages, ...
    grid: tuple[int, ...] = ()   # programs along each grid axis
    # Every argument's value, tensors as TensorArg: what a cost model or a GPU replay of the launch needs.
    values: tuple[tuple[str, object], ...] = ()
    backward: bool = False       # launched by autograd's backward pass


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a recorded launch, without its storage."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    data_ptr: int

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's elements (not of the storage it views)."""
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class DescriptorArg:
    """A host tensor descriptor argument of a recorded launch: the tensor it views, as TensorArg, and its
    shape, strides and block (box) shape."""

    base: TensorArg
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    block_shape: tuple[int, ...]


def _tensor_arg(t: torch.Tensor) -> TensorArg:
    """`t` as a TensorArg: its shape, strides, dtype and address, without its storage."""
    return TensorArg(tuple(t.shape), tuple(t.stride()), t.dtype, t.data_ptr())


_TORCH_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
                torch.uint8: "u8", torch.bool: "i1"}


def _specialise(param: object, value: object) -> tuple[str, bool]:
    """(Triton type, divisible by 16) of a runtime argument, by the rules of Triton's launcher (the same
    in triton 3.6 and 3.9): None and ints equal to 1 become constants ("constexpr"), ints are i32 when
    they fit, then i64 (u64 above 2^63); ints and pointers divisible by 16 are marked divisible; a host
    tensor descriptor is "tensordesc<dtype[block shape]>"."""
    specialise = not getattr(param, "do_not_specialize", False)
    align = not getattr(param, "do_not_specialize_on_alignment", False)
    annotation = getattr(param, "annotation_type", "") or ""
    if annotation == "u1" or annotation[:2] in ("fp", "bf"):
        return annotation, False
    if value is None:
        kind, divisible = "constexpr", False
    elif isinstance(value, bool):
        kind, divisible = "u1", False
    elif isinstance(value, int):
        divisible = specialise and align and value % 16 == 0
        if value == 1 and specialise and not annotation:
            kind = "constexpr"
        elif -2**31 <= value < 2**31:
            kind = "i32"
        elif 2**63 <= value < 2**64:
            kind = "u64"
        else:
            kind = "i64"
    elif isinstance(value, float):
        kind, divisible = "fp32", False
    elif isinstance(value, torch.Tensor):
        kind = "*" + _TORCH_TYPES[value.dtype]
        divisible = align and value.data_ptr() % 16 == 0
    elif isinstance(value, TensorDescriptor):
        kind = f"tensordesc<{_TORCH_TYPES[value.base.dtype]}[{', '.join(map(str, value.block_shape))}]>"
        divisible = False
    else:
        raise TypeError(f"cannot specialise a kernel argument of type {type(value).__name__}")
    return (annotation or kind), divisible


def record(fn: JITFunction, kernel: str, shape: str, problem: dispatch.Problem, config: dispatch.Config,
            heuristic: bool, args: tuple, kwargs: dict, grid: object = (), backward: bool = False) -> Launch:
    """Turn an intercepted `fn[grid](*args, **kwargs)` into a Launch."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update((k, v) for k, v in kwargs.items() if k in names)
    options = {k: v for k, v in kwargs.items() if k not in names}
    signature, constexprs, divisible = [], [], []
    for i, param in enumerate(fn.params):
        name = names[i]
        if name not in bound:
            if not param.has_default:
                raise TypeError(f"{fn.__name__} launched without argument {name!r}")
            bound[name] = param.default
        value = bound[name]
        if param.is_constexpr:
            kind = "constexpr"
        else:
            kind, div = _specialise(param, value)
            if div:
                divisible.append(i)
        signature.append((name, kind))
        if kind == "constexpr":
            constexprs.append((name, value))
    missing = [k for k, _ in config.meta if k not in dict(constexprs)]
    if missing:
        raise TypeError(f"{fn.__name__}: config parameters {missing} are not constexpr arguments of the kernel")
    if callable(grid):
        grid = grid({**bound, **options})
    values = tuple((name, _tensor_arg(v) if isinstance(v, torch.Tensor) else
                    DescriptorArg(_tensor_arg(v.base), tuple(v.shape), tuple(v.strides), tuple(v.block_shape))
                    if isinstance(v, TensorDescriptor) else v) for name, v in bound.items())
    return Launch(kernel, shape, problem, config, heuristic, f"{fn.fn.__module__}:{fn.__name__}", tuple(signature),
                  tuple(constexprs), tuple(divisible), tuple(sorted(options.items())),
                  tuple(int(g) for g in grid), values, backward)


class _Recorder:
    """Stands in for dispatch.config_for and JITFunction.run while probes run (see `_gpu_world`)."""

    def __init__(self, full: bool, also: Mapping[str, int] | None = None) -> None:
        self.full = full  # also launch every configuration of each kernel's tuning space
        self.also = dict(also or {})  # also launch the heuristic's configuration with these meta-parameters
        self.launches: list[Launch] = []
        self.errors: list[str] = []
        self.shape = ""
        # What the last config_for of each kernel function answered: (problem, config, heuristic's pick).
        self._current: dict[JITFunction, tuple[dispatch.Problem, dispatch.Config, bool]] = {}

    def start(self, shape: str) -> None:
        """Label the launches that follow with the probe's `shape`."""
        self.shape = shape
        self._current.clear()

    def config_for(self, problem: dispatch.Problem, launch: Callable | None = None) -> dispatch.Config:
        spec = dispatch.spec(problem.kernel)
        pick = spec.heuristic(problem, False)
        if self.full:
            candidates = list(dict.fromkeys(spec.space(problem)))
        else:
            variant = dispatch.Config.of(pick.num_warps, pick.num_stages, **{**dict(pick.meta), **self.also})
            candidates = [variant] if self.also and variant in spec.space(problem) else []
        if candidates and launch is None:
            self.errors.append(f"{problem.kernel}: its launcher passes no launch closure to dispatch.config_for, "
                               "so its tuning space cannot be swept")
        elif candidates:
            for cfg in candidates:
                if cfg != pick:
                    self._current[spec.fn] = (problem, cfg, False)
                    launch(cfg)
        self._current[spec.fn] = (problem, pick, True)
        return pick

    def launcher(self, fn: JITFunction, grid: tuple[int, ...], **options: object) -> Callable:
        """Stands in for `_plans.launcher`: the launch keeps the Problem and Config asked for when it was
        made, since a plan may launch it after another launch of the same kernel function asked for its
        own (drop_block2d's count and apply passes share one kernel)."""
        current = self._current.get(fn)
        return lambda *args: self.run(fn, args, options, grid, current)

    def run(self, fn: JITFunction, args: tuple, kwargs: dict, grid: object,
            current: tuple[dispatch.Problem, dispatch.Config, bool] | None = None) -> None:
        current = current or self._current.get(fn)
        if current is None:
            raise RuntimeError(f"{fn.__name__} was launched without asking dispatch.config_for for its Config")
        problem, cfg, heuristic = current
        # Autograd runs backward functions on this thread, with the node it runs as the current one.
        backward = torch._C._current_autograd_node() is not None
        self.launches.append(record(fn, problem.kernel, self.shape, problem, cfg, heuristic, args, kwargs, grid,
                                     backward))


@contextlib.contextmanager
def _gpu_world(full: bool, also: Mapping[str, int] | None = None) -> Iterator[_Recorder]:
    """Inside the block, ops record their launches instead of running them, as if on a GPU (see the
    module docstring)."""
    recorder = _Recorder(full, also)
    saved = (dispatch.config_for, dispatch.use_torch, JITFunction.run, _plans.launcher)
    dispatch.config_for = recorder.config_for
    _plans.launcher = recorder.launcher
    dispatch.use_torch = lambda *args, **kwargs: False  # we check our kernels, never PyTorch's
    JITFunction.run = lambda fn, *args, grid, warmup, **kwargs: recorder.run(fn, args, kwargs, grid)
    try:
        # Every call plans afresh (tritonconv._plans), so every launch asks the recorder for its Config.
        with _checks.running_as(_checks.Mode.PROBE), _plans.uncached():
            yield recorder
    finally:
        dispatch.config_for, dispatch.use_torch, JITFunction.run, _plans.launcher = saved


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms(enabled) inside the block, without its NaN fill of new tensors
    (the probes' tensors are never touched)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(enabled)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def probe(dtypes: Iterable[str], full: bool, also: Mapping[str, int] | None = None) -> tuple[list[Launch], list[str]]:
    """Run every probe whose op exists, in every dtype; return the recorded launches and the errors (`full`
    and `also` as for _Recorder)."""
    if not isinstance(dispatch.spec(dispatch.kernels()[0]).fn, JITFunction):
        raise SystemExit("triton was imported with TRITON_INTERPRET set, so the kernels cannot be compiled: "
                         "run `python -m bench.static` in a process without TRITON_INTERPRET")
    with _gpu_world(full, also) as recorder:
        for p in PROBES:
            if not hasattr(tritonconv, p.op):
                recorder.errors.append(f"probe {p.op!r} [{p.shape}]: tritonconv has no op {p.op!r}")
                continue
            for dtype in dtypes:
                recorder.start(p.shape)
                try:
                    with _deterministic(p.deterministic):
                        p.run(getattr(tritonconv, p.op), DTYPES[dtype])
                except Exception as e:  # noqa: BLE001 (a failing probe is reported, the others still run)
                    recorder.errors.append(f"probe {p.op} [{p.shape}] {dtype}: {type(e).__name__}: {e}")
    return recorder.launches, recorder.errors


# ---------------------------------------------------------------------------------------------------------
# Compiling (in worker processes).
# ---------------------------------------------------------------------------------------------------------

_SIDE_FILE = "tritonconv_static.json"  # ptxas's numbers, kept beside the cubin in Triton's cache
_SASS_FILE = "tritonconv_sass.txt"     # cuobjdump's output, likewise
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_OPCODE = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9]*)")


def _cuobjdump() -> str:
    """Path of the cuobjdump that ships in Triton's wheel."""
    try:
        return triton.knobs.nvidia.cuobjdump.path
    except AttributeError:
        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _worker_init() -> None:
    # Triton prints ptxas's log (registers, spill bytes) to stdout after each compile when this is set.
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    # Triton 3.9 warns once per process that its fp-fusion default will change; we compile with the
    # default a GPU launch gets, so the warning is noise here.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _compile_once(job: dict) -> tuple[object, str, float]:
    """triton.compile the job; returns (compiled kernel, captured stdout, seconds)."""
    module, name = job["fn"].split(":")
    fn = getattr(importlib.import_module(module), name)
    src = ASTSource(fn=fn, signature=dict(job["signature"]), constexprs=dict(job["constexprs"]),
                    attrs={(i,): [["tt.divisibility", 16]] for i in job["divisible"]})
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=GPUTarget("cuda", TARGETS[job["target"]][0], 32),
                                options=dict(job["options"]))
    return kernel, log.getvalue(), time.perf_counter() - start


def _compile(job: dict) -> tuple[object, dict]:
    """Compile the job, or take it from Triton's cache; return the kernel and ptxas's spill bytes (summed
    over the cubin's functions) with the compile's seconds. A fresh compile keeps these numbers in a file
    beside the cubin in Triton's cache, since a cache hit runs no ptxas."""
    kernel, log, seconds = _compile_once(job)
    cache = get_cache_manager(getattr(kernel, "hash", None) or kernel.metadata.hash)
    if not _PTXAS_SPILLS.search(log):
        side = cache.get_file(_SIDE_FILE)
        if side is not None:
            return kernel, json.loads(Path(side).read_text())
        # Cached by a compile that kept no numbers (a GPU run, say): compile again to see ptxas's log.
        os.environ["TRITON_ALWAYS_COMPILE"] = "1"
        try:
            kernel, log, seconds = _compile_once(job)
        finally:
            del os.environ["TRITON_ALWAYS_COMPILE"]
    functions = _PTXAS_SPILLS.findall(log)
    if not functions:
        raise RuntimeError("ptxas printed no log: this triton does not honour TRITON_DUMP_PTXAS_LOG")
    measured = {"spill_store_bytes": sum(int(f[1]) for f in functions),
                "spill_load_bytes": sum(int(f[2]) for f in functions), "compile_s": round(seconds, 2)}
    cache.put(json.dumps(measured), _SIDE_FILE, binary=False)
    return kernel, measured


def _dump(kernel: object) -> str:
    """`cuobjdump --dump-resource-usage --dump-sass` of the kernel's cubin, kept beside the cubin in
    Triton's cache (the tool takes about a second, a cache hit none)."""
    cache = get_cache_manager(getattr(kernel, "hash", None) or kernel.metadata.hash)
    side = cache.get_file(_SASS_FILE)
    if side is not None:
        return Path(side).read_text()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        dump = subprocess.run([_cuobjdump(), "--dump-resource-usage", "--dump-sass", f.name],
                              check=True, capture_output=True, text=True).stdout
    cache.put(dump, _SASS_FILE, binary=False)
    return dump


def compile_job(job: dict, code: bool = False) -> dict:
    """Compile one (kernel, signature, configuration) for one target and measure the cubin; with `code`,
    the row also holds cuobjdump's output ("sass": resource usage and SASS) and the PTX ("ptx")."""
    row = {"registers": None, "stack_bytes": None, "spill_store_bytes": None, "spill_load_bytes": None,
           "local_ops": None, "shared_bytes": None, "hgmma": None, "hmma": None, "compile_s": None,
           "verdict": "no-compile", "error": ""}
    try:
        kernel, measured = _compile(job)
        dump = _dump(kernel)
    except Exception as e:  # noqa: BLE001 (any failure to compile is the verdict)
        # Triton's messages put the source excerpt first and the reason last: keep both ends.
        lines = [line.strip() for line in f"{type(e).__name__}: {e}".splitlines() if line.strip()]
        row["error"] = (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}")[:300]
        return row
    # Registers and stack of the kernel; shared memory is Triton's dynamic allocation plus any static.
    registers, stack, static_shared, _ = map(int, _RESOURCES.search(dump).groups())
    opcodes = collections.Counter(_OPCODE.findall(dump))
    row.update(measured, registers=registers, stack_bytes=stack, local_ops=opcodes["LDL"] + opcodes["STL"],
               shared_bytes=kernel.metadata.shared + static_shared, hgmma=opcodes["HGMMA"], hmma=opcodes["HMMA"])
    if code:
        row.update(sass=dump, ptx=kernel.asm["ptx"])
    if row["shared_bytes"] > TARGETS[job["target"]][1]:
        row["verdict"] = "smem-over-limit"
    elif row["spill_store_bytes"] or row["spill_load_bytes"] or row["local_ops"]:
        row["verdict"] = "spills"
    else:
        row["verdict"] = "ok"
    return row


# ---------------------------------------------------------------------------------------------------------
# Jobs, rows, reports.
# ---------------------------------------------------------------------------------------------------------

COLUMNS = ["target", "kernel", "family", "gemm", "dtype", "layout", "heuristic", "shapes", "config", "num_warps",
           "num_stages", "registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes", "local_ops",
           "shared_bytes", "hgmma", "hmma", "compile_s", "verdict", "error", "config_json"]
_INT_COLUMNS = ["num_warps", "num_stages", "registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes",
                "local_ops", "shared_bytes", "hgmma", "hmma"]


def first_shapes(launches: list[Launch]) -> list[Launch]:
    """The launches of the first probe shape that launches each (kernel, dtype, layout)."""
    first: dict[tuple, str] = {}
    for launch in launches:
        first.setdefault((launch.kernel, launch.problem.dtype, launch.problem.channels_last), launch.shape)
    return [launch for launch in launches
            if first[launch.kernel, launch.problem.dtype, launch.problem.channels_last] == launch.shape]


def jobs(launches: list[Launch], targets: list[str]) -> dict[tuple, dict]:
    """One compile job per distinct (target, function, signature, constants, options), with every launch
    that needs it."""
    out: dict[tuple, dict] = {}
    for target in targets:
        for launch in launches:
            key = (target, launch.fn, launch.signature, launch.constexprs, launch.divisible, launch.options)
            job = out.setdefault(key, {"target": target, "fn": launch.fn, "signature": launch.signature,
                                       "constexprs": launch.constexprs, "divisible": launch.divisible,
                                       "options": launch.options, "launches": []})
            job["launches"].append(launch)
    return out


def _row(job: dict, result: dict) -> dict:
    first: Launch = job["launches"][0]
    shapes = dict.fromkeys(launch.shape for launch in job["launches"])
    options = dict(job["options"])
    return {"target": job["target"], "kernel": first.kernel, "family": dispatch.spec(first.kernel).family,
            "gemm": first.kernel in GEMM_KERNELS, "dtype": str(first.problem.dtype).removeprefix("torch."),
            "layout": "nhwc" if first.problem.channels_last else "nchw",
            "heuristic": any(launch.heuristic for launch in job["launches"]), "shapes": " + ".join(shapes),
            "config": str(first.config), "config_json": json.dumps(first.config.to_json(), sort_keys=True),
            "num_warps": options.get("num_warps"), "num_stages": options.get("num_stages"), **result}


def _no_probe_rows(kernels: list[str], launches: list[Launch], targets: list[str], errors: list[str]) -> list[dict]:
    """A row per target for each kernel that no probe launched."""
    seen = {launch.kernel for launch in launches}
    error = "; ".join(["no probe in bench/static.py PROBES launches this kernel", *errors])
    return [{"target": target, "kernel": k, "family": dispatch.spec(k).family, "gemm": k in GEMM_KERNELS,
             "verdict": "no-probe", "error": error} for target in targets for k in kernels if k not in seen]


def _count(verdict: str) -> tuple[str, Callable[[pd.Series], int]]:
    """A named aggregation: how many rows of a group have `verdict`."""
    return "verdict", lambda v: int((v == verdict).sum())


def summary(df: pd.DataFrame, space: str) -> str:
    """The markdown report: per target, one line per kernel (over dtypes, shapes and configurations), then
    every compiled configuration that is not ok."""
    parts = [f"# Static checks ({space} space, triton {triton.__version__})", ""]
    for target, t in df.groupby("target", sort=False):
        mma = "hgmma" if target == "sm_90" else "hmma"
        view = t.groupby("kernel", sort=True).agg(
            compiled=("verdict", "size"), ok=_count("ok"), spills=_count("spills"),
            smem_over_limit=_count("smem-over-limit"), no_compile=_count("no-compile"), max_regs=("registers", "max"),
            max_spill_B=("spill_store_bytes", "max"), max_smem_KB=("shared_bytes", lambda v: round(v.max() / 1024, 1)),
            gemm=("gemm", "first"), min_mma=(mma, "min"), compile_s=("compile_s", lambda v: round(v.sum(), 1)))
        # Tensor-core instructions matter for GEMM-shaped kernels only.
        view.insert(len(view.columns) - 1, f"min {mma.upper()}",
                    view["min_mma"].astype(object).where(view["gemm"], ""))
        parts += [f"## {target}", "", markdown_table(view.drop(columns=["gemm", "min_mma"]).reset_index()), ""]
        bad = t[t["verdict"] != "ok"]
        if len(bad):
            shown = bad.assign(smem_KB=(bad["shared_bytes"] / 1024).round(1))
            parts += [f"Not ok on {target}:", "",
                      markdown_table(shown[["kernel", "dtype", "shapes", "config", "registers", "spill_store_bytes",
                                      "local_ops", "smem_KB", mma, "verdict", "error"]]), ""]
    return "\n".join(parts)


def update_rejects(df: pd.DataFrame, path: Path = REJECTS_PATH) -> None:
    """Replace, for every (target, kernel, dtype, layout) this full sweep covered, the rejected
    configurations in tritonconv/static_rejects.json: those that did not compile, exceed shared memory or
    spill for some probe shape of that layout (the layout decides which strides are the constant 1, so it
    changes the code most). Entries of groups the sweep did not cover stay. One entry per line, sorted."""
    group = ["target", "kernel", "dtype", "layout"]
    swept = df[df["verdict"] != "no-probe"]
    covered = {(t, k, f"torch.{d}", l) for t, k, d, l in swept[group].itertuples(index=False, name=None)}
    old = json.loads(path.read_text())["rejects"] if path.exists() else []
    entries = {json.dumps(e, sort_keys=True) for e in old if tuple(e[k] for k in group) not in covered}
    for r in swept[swept["verdict"].isin(REJECT_VERDICTS)].itertuples():
        entries.add(json.dumps({"target": r.target, "kernel": r.kernel, "dtype": f"torch.{r.dtype}", "layout": r.layout,
                                **json.loads(r.config_json), "verdict": r.verdict,
                                "source": dispatch.spec(r.kernel).source_hash()}, sort_keys=True))
    about = ("Configurations that do not compile, exceed shared memory or spill, per target, kernel, dtype and "
             "layout, with the hash of the kernel's source file they were found with. Written by "
             "`python -m bench.static --space full --update-rejects`; read by tritonconv.static_checks.")
    path.write_text(f'{{"about": {json.dumps(about)},\n "triton": "{triton.__version__}",\n "rejects": [\n'
                    + ",\n".join(sorted(entries)) + "\n]}\n")


def select(parser: argparse.ArgumentParser, names: list[str] | None, dtypes: list[str], full: bool,
           quick: bool, also: Mapping[str, int] | None = None) -> tuple[list[str], list[Launch], list[str]]:
    """The kernels named on the command line (every registered one when None; an unknown name is a usage
    error), their probe launches in `dtypes` (with `quick`, the first probe shape of each kernel, dtype
    and layout only; with `also`, the heuristic's configuration so changed too, see _Recorder) and the
    probes' errors."""
    kernels = dispatch.kernels()
    if names:
        unknown = sorted(set(names) - set(kernels))
        if unknown:
            parser.error(f"unknown kernels {unknown}; registered: {kernels}")
        kernels = sorted(names)
    launches, errors = probe(dtypes, full, also)
    launches = [launch for launch in launches if launch.kernel in kernels]
    return kernels, first_shapes(launches) if quick else launches, errors


def meta_assignment(text: str) -> tuple[str, int]:
    """NAME=VALUE (an int) from the command line, for --also."""
    name, sep, value = text.partition("=")
    if not (name and sep and value.removeprefix("-").isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE with an int VALUE, e.g. B_DESCRIPTOR=1")
    return name, int(value)


def add_also(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--also", nargs="+", type=meta_assignment, default=[], metavar="NAME=VALUE",
                        help="also launch each kernel's heuristic configuration with these meta-parameters set, "
                             "where its tuning space holds that configuration (e.g. B_DESCRIPTOR=1: "
                             "conv2d_forward's weight tiles through a TMA tensor descriptor)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", nargs="+", choices=sorted(TARGETS), default=["sm_90"])
    parser.add_argument("--out", type=Path, default=OUT / "static", help="folder for static.csv/.md")
    parser.add_argument("--space", choices=("heuristic", "full"), default="heuristic",
                        help="heuristic: the configurations the dispatcher picks for the probes' shapes; "
                             "full: also every configuration of each kernel's tuning space")
    parser.add_argument("--kernel", nargs="+", metavar="NAME", help="only these registered kernels")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--quick", action="store_true",
                        help="compile each (kernel, dtype, layout) only for the first probe shape that launches "
                             "it, not for every shape (what CI runs)")
    add_also(parser)
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes")
    parser.add_argument("--update-rejects", action="store_true",
                        help=f"with --space full: write the rejected configurations to {REJECTS_PATH}")
    args = parser.parse_args(argv)
    if args.update_rejects and args.space != "full":
        parser.error("--update-rejects needs --space full (a heuristic sweep does not see the tuning space)")
    kernels, launches, errors = select(parser, args.kernel, args.dtype, args.space == "full", args.quick,
                                       dict(args.also))
    todo = jobs(launches, args.target)
    rows = _no_probe_rows(kernels, launches, args.target, errors)
    # Spawned workers import triton afresh, without TRITON_INTERPRET, and with the ptxas log switched on.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = {pool.submit(compile_job, {k: v for k, v in job.items() if k != "launches"}): job
                   for job in todo.values()}
        for future in progress(as_completed(futures), "compiling", total=len(futures), unit="kernel"):
            rows.append(_row(futures[future], future.result()))

    df = pd.DataFrame(rows, columns=COLUMNS).astype({c: "Int64" for c in _INT_COLUMNS})
    df = df.sort_values(["target", "kernel", "dtype", "layout", "heuristic", "config"],
                        ascending=[False, True, True, True, False, True], kind="stable")
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "static.csv", index=False)
    (args.out / "static.md").write_text(summary(df[df["verdict"] != "no-probe"], args.space) + "\n")
    if args.update_rejects:
        update_rejects(df)
    print(f"wrote {args.out / 'static.csv'} and {args.out / 'static.md'}: "
          + ", ".join(f"{n} {v}" for v, n in df["verdict"].value_counts().items()))
    for error in errors:
        print("error:", error, file=sys.stderr)
    for kernel in df.loc[df["verdict"] == "no-probe", "kernel"].unique():
        print(f"error: no probe in PROBES launches kernel {kernel!r}", file=sys.stderr)
    failed = errors or (df["verdict"] == "no-probe").any()
    return 1 if failed or (args.space == "heuristic" and (df["verdict"] != "ok").any()) else 0


if __name__ == "__main__":
    sys.exit(main())
