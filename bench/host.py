"""Host overhead: the CPU time one cached eager call of each public op costs before any kernel runs.

    python -m bench --suite host [--out DIR]
    python -m bench.host [--out DIR] [--number 2000] [--repeats 7] [--gpu]

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
the mean over `number` calls.

Triton's own launch cost comes on top on a GPU: `--gpu` (which `bench/gpu_check.sh` runs) times real
launches there, host and end-to-end time per call against PyTorch's op, eager and under CUDA-graph replay.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import tritonconv as tc
from tritonconv import _checks, dispatch

from .adapters import OPS
from .report import markdown_table
from .suites import SUITES

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


def _step(call: Callable[[], object]) -> Callable[[], object]:
    """`call` and a backward through its (first) output, as a training step runs it."""
    def step():
        out = call()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.backward(out, torch.empty_like(out))
    return step


def calls(mode: str, ops: list[str] | None = None) -> dict[str, Callable[[], object]]:
    """Zero-argument calls in `mode` (see MODES): the two references, then one per op (the quick suite's
    first case of each, on its interpreter-sized shape, bf16 channels_last), on uninitialised CPU tensors."""
    requires_grad = mode != "fwd"
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
    return {name: _step(call) for name, call in result.items()} if mode == "step" else result


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


# What is timed: the forward call alone ("fwd"), the forward call with inputs requiring grad, autograd
# recording ("grad"), and that call followed by its backward ("step", a training step of one op).
MODES = ("fwd", "grad", "step")


def host_times(ops: list[str] | None = None, number: int = 2000, repeats: int = 7,
               modes: tuple[str, ...] = MODES) -> dict[str, dict[str, float]]:
    """{mode: {call: us per call}} for the `modes` asked for (see MODES), for the references and `ops`
    (default: every op of the quick suite), launches stubbed out."""
    with stubbed_launches():
        return {mode: per_call_us(calls(mode, ops), number, repeats) for mode in modes}


def frame(times: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per call: us per call in each mode, and each as a multiple of the empty Function in the same
    run: of its forward-only call for "fwd" and "grad", of its own step for "step"."""
    units = {mode: times["step" if mode == "step" else "fwd"][FUNCTION] for mode in times}
    return pd.DataFrame([{"op": name, **{column: value for mode in times for column, value in
                                         ((f"{mode}_us", times[mode][name]),
                                          (f"{mode}_x_function", times[mode][name] / units[mode]))}}
                         for name in times["fwd"]])


# ---------------------------------------------------------------------------------------------------------
# On a GPU: real launches, against PyTorch's, and under CUDA-graph replay.
# ---------------------------------------------------------------------------------------------------------

def gpu_calls() -> Iterator[tuple[str, str, Callable[[], object], Callable[[], object]]]:
    """(op, layer, ours, PyTorch's) on CUDA tensors: tc.conv2d on MobileNetV2's 3x3 depthwise layer 144@56
    at batch 1 and 8 (fp16 channels_last) against F.conv2d, then the quick suite's first case of each op
    at batch 1 (bf16 channels_last), where the host path, not the kernel, sets the pace."""
    device = torch.device("cuda")
    for n in (1, 8):
        x = torch.randn(n, 144, 56, 56, device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
        w = torch.randn(144, 1, 3, 3, device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
        args = (None, 1, 1, 1, 144)
        yield ("conv2d", f"MobileNetV2 3x3 depthwise 144@56 N={n} fp16", lambda x=x, w=w: tc.conv2d(x, w, *args),
               lambda x=x, w=w: F.conv2d(x, w, *args))
    seen = set()
    for case in SUITES["quick"].cases:
        if case.op in seen:
            continue
        seen.add(case.op)
        case, op = dataclasses.replace(case, n=1), OPS[case.op]
        t = op.inputs(case, torch.bfloat16, True, device)
        yield (case.op, f"{case.layer} N=1 bf16", lambda op=op, case=case, t=t: op.ours(case, t),
               lambda op=op, case=case, t=t: op.theirs(case, t))


def launch_us(call: Callable[[], object], number: int, repeats: int = 3) -> tuple[float, float]:
    """(host us, end-to-end us) per call of `call`, `number` calls back to back: the host time stops when
    the last call returns, the end-to-end time after the GPU finished them; best of `repeats`."""
    call()
    torch.cuda.synchronize()
    best = (math.inf, math.inf)
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        host = time.perf_counter()
        torch.cuda.synchronize()
        end = time.perf_counter()
        best = min(best[0], (host - start) / number * 1e6), min(best[1], (end - start) / number * 1e6)
    return best


def graphed(call: Callable[[], object]) -> tuple[Callable[[], object], object]:
    """`call` captured once in a CUDA graph (after warm-up calls on a side stream, as torch.cuda.graphs
    asks): the graph's replay, and the captured call's output, which every replay rewrites."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = call()
    return graph.replay, output


def gpu_frame(number: int = 200, budget_s: float = 20.0) -> pd.DataFrame:
    """Per call of `gpu_calls`: host and end-to-end us, ours and PyTorch's, eager and as CUDA-graph replay
    (end to end); no case starts after `budget_s` seconds."""
    rows, start = [], time.perf_counter()
    for op, layer, ours, theirs in gpu_calls():
        if time.perf_counter() - start > budget_s:
            rows.append({"op": op, "layer": layer, "note": "not run (time budget)"})
            continue
        row = {"op": op, "layer": layer, "note": ""}
        for name, call in (("ours", ours), ("torch", theirs)):
            row[f"{name}_host_us"], row[f"{name}_us"] = launch_us(call, number)
            try:
                row[f"{name}_graph_us"] = launch_us(graphed(call)[0], number)[1]
            except RuntimeError as err:  # PyTorch's reference of a random op need not be capturable
                row["note"] += f"{name} not capturable ({str(err).splitlines()[0][:80]}); "
        rows.append(row)
    return pd.DataFrame(rows)


def main(out: Path | None, number: int = 2000, repeats: int = 7, gpu: bool = False) -> int:
    """Measure and print the stubbed CPU table (and with `gpu`, the real-launch table); with `out`, write
    host.md and host.csv there. 0 always (tests/test_host.py checks the ratios)."""
    df = frame(host_times(number=number, repeats=repeats))
    us, ratio = "{:.1f}".format, "{:.1f}x".format
    text = ("Host time per cached eager call, Triton launches stubbed out (CPU, PROBE mode, tuning off); "
            f"min over {repeats} rounds of the mean of {number} calls. fwd: the call; grad: the call with inputs "
            "requiring grad; step: that call and its backward. x_function: multiple of the empty "
            "autograd.Function's time in the same run (its forward-only call; for step, its step).\n\n"
            + markdown_table(df, {c: us if c.endswith("_us") else ratio for c in df.columns if c != "op"})
            + "\n")
    if gpu:
        gdf = gpu_frame()
        text += (f"\nOn {torch.cuda.get_device_name()}, real launches: host us per call (the loop's time before the "
                 "final synchronisation), end-to-end us per call, and end-to-end us per CUDA-graph replay of one "
                 "call; ours against PyTorch's.\n\n"
                 + markdown_table(gdf, {c: us for c in gdf.columns if c.endswith("_us")}) + "\n")
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "host.md").write_text(text)
        df.to_csv(out / "host.csv", index=False)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write host.md and host.csv here (default: print only)")
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gpu", action="store_true",
                        help="also time real launches on the GPU, eager and under CUDA-graph replay, against PyTorch")
    args = parser.parse_args()
    raise SystemExit(main(args.out, args.number, args.repeats, args.gpu))
