"""Host overhead: the CPU time one cached eager call of each public op costs before any kernel runs.

    python -m bench --suite host [--out DIR] [--number 2000] [--repeats 7]

A fast kernel does not help a layer that waits on Python. This suite times, on the CPU, each op of the
`quick` suite (its first case per op, on the interpreter-sized shape: the host path does not depend on
the size) with every Triton launch replaced by a no-op, so what is left is exactly our host code: argument
checks, dispatch, output allocation and the kernel call's argument list. It runs as the static probes do
(`tritonconv._checks.Mode.PROBE`: the dispatcher's GPU decisions and launch flags, CPU tensors accepted),
with tuning off, so every configuration comes from the heuristic and is remembered after the first call.

Each op is timed forward only (inputs not requiring grad) and with autograd recording (inputs requiring
grad; the forward call alone), beside two references measured in the same run and interleaved with the
ops, so that a loaded machine slows all alike: an empty `torch.autograd.Function` and an empty
`torch.library` custom op, each allocating its output. A time is the minimum over `repeats` rounds of
the mean over `number` calls. Triton's own launch cost comes on top on a GPU; `bench/gpu_check.sh` measures
it there.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from tritonconv import _checks, dispatch

from bench.adapters import OPS
from bench.report import markdown_table
from bench.suites import SUITES

FUNCTION, CUSTOM_OP = "empty autograd.Function", "empty custom op"


class _EmptyFunction(torch.autograd.Function):
    """The cheapest op autograd can record: allocates its output, computes nothing."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        return dy


@torch.library.custom_op("tritonconv_bench::empty", mutates_args=())
def _empty_op(x: torch.Tensor) -> torch.Tensor:
    """The cheapest custom op: allocates its output, computes nothing."""
    return torch.empty_like(x)


_empty_op.register_fake(torch.empty_like)
_empty_op.register_autograd(lambda ctx, dy: dy)


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """Inside the block every Triton launch returns at once, ops decide as on a GPU on CPU tensors (PROBE
    mode) with tuning off and an empty configuration cache; everything is restored afterwards."""
    saved = JITFunction.run, InterpretedFunction.run, os.environ.get("TRITONCONV_CACHE_DIR"), dispatch.get_autotune()
    noop = lambda self, *args, grid, warmup, **kwargs: None  # noqa: E731
    with tempfile.TemporaryDirectory() as cache_dir:
        JITFunction.run = InterpretedFunction.run = noop
        os.environ["TRITONCONV_CACHE_DIR"] = cache_dir
        dispatch.set_autotune(False)
        dispatch.forget()
        try:
            with _checks.running_as(_checks.Mode.PROBE):
                yield
        finally:
            JITFunction.run, InterpretedFunction.run, cache, autotune = saved
            if cache is None:
                os.environ.pop("TRITONCONV_CACHE_DIR", None)
            else:
                os.environ["TRITONCONV_CACHE_DIR"] = cache
            dispatch.set_autotune(autotune)
            dispatch.forget()


def calls(requires_grad: bool, ops: list[str] | None = None) -> dict[str, Callable[[], object]]:
    """Zero-argument calls: the two references, then one per op (the quick suite's first case of each, on
    its interpreter-sized shape, bf16 channels_last), on uninitialised CPU tensors."""
    x = torch.empty(2, 4, 8, 8, requires_grad=requires_grad)
    result = {FUNCTION: lambda: _EmptyFunction.apply(x), CUSTOM_OP: lambda: _empty_op(x)}
    cases = {}
    for case in SUITES["quick"].cases:
        if (ops is None or case.op in ops) and case.op not in cases:
            cases[case.op] = case.scaled()
    for name, case in cases.items():
        op = OPS[name]
        fmt = torch.channels_last
        tensors = {key: torch.empty(shape, dtype=torch.bfloat16).contiguous(
                       memory_format=fmt if len(shape) == 4 else torch.contiguous_format).requires_grad_(requires_grad)
                   for key, shape in op.shapes(case).items()}
        result[name] = lambda op=op, case=case, tensors=tensors: op.ours(case, tensors)
    return result


def per_call_us(named_calls: dict[str, Callable[[], object]], number: int, repeats: int) -> dict[str, float]:
    """Microseconds of this thread's CPU time per call of each: the minimum over `repeats` rounds (all
    calls interleaved in each round) of the mean over `number` calls, after one untimed call that fills
    the caches. CPU time rather than wall time, since the host path never waits and a loaded machine
    then slows it less; the garbage collector is off while a call is timed, as in `timeit`, since a
    collection costs whatever the whole process holds, not what the call does."""
    best = dict.fromkeys(named_calls, math.inf)
    for call in named_calls.values():
        call()
    for _ in range(repeats):
        for name, call in named_calls.items():
            gc.disable()
            try:
                start = time.thread_time_ns()
                for _ in range(number):
                    call()
                best[name] = min(best[name], (time.thread_time_ns() - start) / number / 1e3)
            finally:
                gc.enable()
    return best


def host_times(ops: list[str] | None = None, number: int = 2000, repeats: int = 7,
               modes: tuple[str, ...] = ("fwd", "grad")) -> dict[str, dict[str, float]]:
    """{"fwd": us per call, "grad": us per call with inputs requiring grad} (the `modes` asked for) for the
    references and `ops` (default: every op of the quick suite), launches stubbed out."""
    with stubbed_launches():
        return {mode: per_call_us(calls(mode == "grad", ops), number, repeats) for mode in modes}


def frame(times: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per call: us per call forward and with grad, and each as a multiple of the empty
    Function's forward-only time in the same run."""
    unit = times["fwd"][FUNCTION]
    return pd.DataFrame([{"op": name, "fwd_us": times["fwd"][name], "fwd_x_function": times["fwd"][name] / unit,
                          "grad_us": times["grad"][name], "grad_x_function": times["grad"][name] / unit}
                         for name in times["fwd"]])


def main(out: Path, number: int = 2000, repeats: int = 7) -> int:
    """Measure, print and write host.md and host.csv; 0 always (the ratios are checked by tests/test_host.py)."""
    df = frame(host_times(number=number, repeats=repeats))
    us, ratio = "{:.1f}".format, "{:.1f}x".format
    text = ("Host time per cached eager call, Triton launches stubbed out (CPU, PROBE mode, tuning off); "
            f"min over {repeats} rounds of the mean of {number} calls. x_function: multiple of the empty "
            "autograd.Function's forward-only time in the same run.\n\n"
            + markdown_table(df, {"fwd_us": us, "grad_us": us, "fwd_x_function": ratio, "grad_x_function": ratio})
            + "\n")
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "host.md").write_text(text)
    df.to_csv(out / "host.csv", index=False)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    raise SystemExit(main(args.out, args.number, args.repeats))
