"""The benchmark run: for each case of a suite, in each dtype, layout and mode, check our op against
PyTorch, then (on a GPU) time both, and write the CSV, the markdown report and the plot.

`python -m bench` (installed: `tritonconv-bench`) is the entry point: it switches Triton to its interpreter before triton is imported
when there is no GPU, then calls `main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

import tritonconv as tc
from tritonconv._checks import interpreting
from tritonconv._progress import progress, write

from . import OUT, host, models, report, timing
from .adapters import OPS, Case, Op
from .suites import DTYPES, LAYOUTS, MODES, SUITES, Suite

# The command as the user typed it: `python -m bench` in a checkout, the console script when installed.
PROGRAM = "python -m bench" if __package__ == "bench" else "tritonconv-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Benchmark tritonconv's ops against PyTorch (cuDNN or its native kernels) on layers of real "
                    "networks. Without a GPU: check every case in Triton's interpreter on a scaled-down shape and "
                    "write the analytic columns only.")
    parser.add_argument("--list", action="store_true", help="list the suites (with --suite: that suite's cases)")
    parser.add_argument("--suite", choices=sorted([*SUITES, models.NAME, "host"]),
                        help="the suite to run; 'host': host time per cached call, launches stubbed (bench/host.py)")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="dtypes (default: the suite's)")
    parser.add_argument("--layout", nargs="+", choices=LAYOUTS, help="memory layouts (default: the suite's)")
    parser.add_argument("--mode", nargs="+", choices=MODES, help="forward, forward+backward (default: both)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT})")
    parser.add_argument("--check-only", action="store_true",
                        help="check every case on its scaled-down shape and time nothing (forced without a GPU)")
    parser.add_argument("--tune", action="store_true",
                        help="let tritonconv autotune each new shape before timing (slow the first time; tuned "
                             "configurations are cached); default: its heuristics and cached tunings")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no case after this many seconds; the rest are recorded as not run")
    args = parser.parse_args(argv)
    if not args.list and args.suite is None:
        parser.error("--suite is required (or --list)")
    return args


def listing(suite: str | None) -> str:
    """The suites (name, cases, ops, default runs), or one suite's cases."""
    if suite == "host":
        return f"host: {host.__doc__.splitlines()[0]}"
    models_line = f"{models.NAME}: {models.DESCRIPTION} (needs torchvision)"
    if suite == models.NAME:
        return models_line
    if suite is not None:
        s = SUITES[suite]
        lines = [f"{s.name}: {s.description}; {runs(len(s.cases), s.dtypes, s.layouts, s.modes)}"]
        lines += [f"  {c.op:<27} {c.layer:<36} {OPS[c.op].describe(c)}" for c in s.cases]
        return "\n".join(lines)
    lines = []
    for s in SUITES.values():
        ops = ", ".join(dict.fromkeys(c.op for c in s.cases))
        lines.append(f"{s.name:<16} {s.description}\n{'':<16} ops: {ops}\n{'':<16} "
                     f"{runs(len(s.cases), s.dtypes, s.layouts, s.modes)}")
    return "\n".join(lines + [models_line, f"{'host':<16} {host.__doc__.splitlines()[0]}"])


def runs(cases: int, dtypes: tuple[str, ...], layouts: tuple[str, ...], modes: tuple[str, ...]) -> str:
    """How a suite's cases become runs, the one count both --list and a run print: a run is one case in one
    dtype and layout, checked (and timed) in each mode."""
    return (f"{cases} cases x {len(dtypes)} dtypes ({'/'.join(dtypes)}) x {len(layouts)} layouts "
            f"({'/'.join(layouts)}) = {cases * len(dtypes) * len(layouts)} runs, each in {' and '.join(modes)}")


@contextlib.contextmanager
def _settings(gpu: bool, tune: bool) -> Iterator[None]:
    """PyTorch picks its fastest cuDNN algorithm per shape (cudnn.benchmark), and tritonconv autotunes new
    shapes only when asked (`tc.set_autotune`); both restored afterwards."""
    saved_benchmark, saved_tune = torch.backends.cudnn.benchmark, tc.get_autotune()
    torch.backends.cudnn.benchmark = gpu
    tc.set_autotune(tune)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
        tc.set_autotune(saved_tune)


def _failure(e: BaseException) -> str:
    """An exception as one short line for the check column."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {text}"[:240]


def _status(failures: list[str]) -> str:
    return "ok" if not failures else "wrong: " + "; ".join(failures)[:240]


@dataclasses.dataclass
class Run:
    """One benchmark run's fixed parts."""

    suite: Suite
    device: torch.device
    timed: bool
    ceilings: timing.Ceilings | None
    env: dict[str, object]

    def group(self, case: Case, dtype_name: str, layout: str, modes: tuple[str, ...]) -> tuple[list[dict], str]:
        """Check (and time) one case in one dtype and layout, for each mode: its rows and a one-line note."""
        op = OPS[case.op]
        dtype, channels_last = DTYPES[dtype_name], layout == "channels_last"
        checked = case if self.timed else case.scaled()
        backward = "fwdbwd" in modes
        providers = {report.OURS: op.ours, report.THEIRS: op.theirs}
        if self.timed and self.device.type == "cuda":
            providers.update(alternatives(op))
        # Per provider: (forward status, forward+backward status). PyTorch's deterministic ops are the reference.
        status: dict[str, tuple[str, str]] = {}
        backend = {name: name for name in providers} | {report.OURS: "tritonconv", report.THEIRS: "not timed"}
        for name, fn in providers.items():
            if name == report.THEIRS and not op.random:
                status[name] = ("reference", "reference")
                continue
            try:
                t = op.inputs(checked, dtype, channels_last, self.device, requires_grad=backward)
                forward, backward_failures = op.check(checked, t, fn, backward)
                status[name] = (_status(forward), _status(forward + backward_failures))
                if name == report.OURS and self.timed:
                    backend[name] = _our_backend(functools.partial(op.ours, case, t))
            except Exception as e:  # noqa: BLE001 (a failing op is a result, not the end of the run)
                status[name] = (_failure(e),) * 2
            finally:
                t = None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        times: dict[tuple[str, str], timing.Timing] = {}
        sets = 0
        if self.timed:
            try:
                sets, backend[report.THEIRS], times = self._time(op, case, dtype, channels_last, modes, providers,
                                                                 status)
            except Exception as e:  # noqa: BLE001 (out of memory for the input sets, say)
                status = {name: (_failure(e),) * 2 for name in status}
                torch.cuda.empty_cache()
        rows = [self.row(op, case, checked, dtype_name, dtype, layout, mode, name, backend[name],
                          status[name][mode == "fwdbwd"], times, sets)
                for mode in modes for name in providers]
        return rows, self._note(rows)

    def _time(self, op: Op, case: Case, dtype: torch.dtype, channels_last: bool, modes: tuple[str, ...],
              providers: dict[str, Callable], status: dict[str, tuple[str, str]]):
        """Time every provider whose check passed (PyTorch's deterministic ops always), in each mode, over
        rotating input sets; a provider whose timed call raises gets the error as its check status.
        Returns (input sets, PyTorch's backend, times by (mode, provider))."""
        backward = "fwdbwd" in modes
        set_bytes = op.bytes(case, torch.empty((), dtype=dtype).element_size(), False)
        free = torch.cuda.mem_get_info(self.device)[0]
        count = timing.rotation_sets(set_bytes, timing.l2_bytes(self.device), free)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        sets = []
        for _ in range(count):
            t = op.inputs(case, dtype, channels_last, self.device, requires_grad=backward)
            dy = None
            if backward:
                dy = torch.randn(op.out_shape(case), device=self.device).to(dtype).contiguous(memory_format=fmt)
            sets.append((t, dy))
        torch_backend = op.torch_backend(case, sets[0][0])
        leaves = [v for t, _ in sets for v in t.values()]
        times = {}
        try:
            for mode in modes:
                for name, fn in providers.items():
                    if status[name][mode == "fwdbwd"] not in ("ok", "reference"):
                        continue
                    try:
                        times[(mode, name)] = timing.time_call(_callable(fn, case, mode, sets),
                                                               leaves if mode == "fwdbwd" else None)
                    except Exception as e:  # noqa: BLE001
                        status[name] = (_failure(e),) * 2 if mode == "fwd" else (status[name][0], _failure(e))
        finally:
            sets = leaves = None
            torch.cuda.empty_cache()
        return count, torch_backend, times

    def row(self, op: Op, case: Case, checked: Case, dtype_name: str, dtype: torch.dtype, layout: str, mode: str,
             provider: str, backend: str, check: str, times: dict, sets: int) -> dict:
        """One row of the tidy table: the case (full size), the analytic columns, the environment, and the
        measured columns when `times` has this mode and provider."""
        backward = mode == "fwdbwd"
        flops = op.total_flops(case, backward)
        nbytes = op.bytes(case, torch.empty((), dtype=dtype).element_size(), backward)
        h200_floor, bound = report.roofline_floor_ms(flops, nbytes, timing.H200, dtype)
        row = {**self.env, **{k: v for k, v in dataclasses.asdict(case).items() if k in report.CASE_COLUMNS},
               "suite": self.suite.name, "layer": case.layer, "op": case.op, "shape": op.describe(case),
               "dtype": dtype_name, "layout": layout, "mode": mode, "provider": provider, "backend": backend,
               "check": check, "flops": sum(flops.values()), "bytes": nbytes, "bound": bound,
               "h200_floor_ms": h200_floor,
               "checked_shape": "" if self.timed or check.startswith("not run") else op.describe(checked)}
        if self.ceilings is not None:
            row.update(ceilings=self.ceilings.source, hbm_tbps=self.ceilings.bandwidth / 1e12,
                       matmul_tflops=self.ceilings.peak("tensor", dtype) / 1e12,
                       simt_tflops=self.ceilings.peak("simt", dtype) / 1e12)
        t = times.get((mode, provider))
        if t is not None:
            floor, _ = report.roofline_floor_ms(flops, nbytes, self.ceilings, dtype)
            theirs = times.get((mode, report.THEIRS))
            row.update(time_ms=t.median_ms, time_p20_ms=t.p20_ms, time_p80_ms=t.p80_ms, reps=t.reps,
                       input_sets=sets, tflops=sum(flops.values()) / (t.median_ms * 1e-3) / 1e12,
                       gbps=nbytes / (t.median_ms * 1e-3) / 1e9, floor_ms=floor,
                       pct_of_floor=report.percent_of_floor(floor, t.median_ms),
                       speedup=theirs.median_ms / t.median_ms if theirs is not None else None)
        return row

    def _note(self, rows: list[dict]) -> str:
        """One line per group: each mode's speedup and % of floor, or its check result."""
        parts = []
        for row in rows:
            if row["provider"] != report.OURS:
                continue
            if row.get("speedup") is not None:
                parts.append(f"{row['mode']} x{row['speedup']:.2f} ({row['pct_of_floor']:.0f}% of floor)")
            elif row["check"] == "ok" and self.timed:
                parts.append(f"{row['mode']} ok, PyTorch not timed")
            else:
                parts.append(f"{row['mode']} {row['check']}")
        torch_checks = {r["check"] for r in rows if r["provider"] == report.THEIRS} - {"ok", "reference"}
        if torch_checks:
            parts.append("PyTorch: " + "; ".join(sorted(torch_checks)))
        return ", ".join(parts)


def alternatives(op: Op) -> dict[str, Callable]:
    """Providers a user would pick instead of us, timed beside ours and PyTorch's eager op on a GPU:
    torch.compile of PyTorch's composition (inductor, default mode) and, when `flag_gems` imports, the
    same composition on FlagGems' Triton kernels (flag_gems.use_gems())."""
    # One compiled graph per case: more cases than dynamo's default recompile limit would fall back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    out = {report.INDUCTOR: _compiled(op)}
    try:
        import flag_gems  # noqa: PLC0415 (optional, GPU only)
    except ImportError:
        return out

    def gems(case: Case, t: dict, seed: int | None = None) -> torch.Tensor:
        with flag_gems.use_gems():
            return op.theirs(case, t, seed)
    out[report.FLAGGEMS] = gems
    return out


@functools.cache
def _compiled(op: Op) -> Callable:
    """torch.compile of op.theirs, made once per op so its graphs are cached across calls."""
    return torch.compile(op.theirs)


def _callable(fn: Callable, case: Case, mode: str, sets: list) -> Callable[[], None]:
    """A no-argument call of `fn` on the next input set: forward under no_grad, or forward then backward."""
    following = timing.cycle(sets)
    if mode == "fwd":
        def call() -> None:
            t, _ = following()
            with torch.no_grad():
                fn(case, t)
    else:
        def call() -> None:
            t, dy = following()
            fn(case, t).backward(dy)
    return call


def _our_backend(call: Callable[[], torch.Tensor]) -> str:
    """Which of our kernel families ran and where its configurations came from (tc.explain)."""
    explain = getattr(tc, "explain", None)
    if explain is None:
        return "tritonconv"
    try:
        e = explain(call)
    except Exception as err:  # noqa: BLE001 (a description, never a reason to fail the case)
        return f"tritonconv ({type(err).__name__} in explain)"
    sources = sorted({launch["source"].split(" ")[0] for launch in e["launches"]})
    return f"tritonconv {e['family']}" + (f" ({', '.join(sources)})" if sources else "")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; 0 when every case that ran checked correct, 1 otherwise."""
    args = parse_args(argv)
    if args.list:
        print(listing(args.suite))
        return 0
    if args.suite == "host":
        return host.main(args.out)
    gpu = torch.cuda.is_available()
    if not gpu and not interpreting():
        print("No CUDA GPU, and Triton's interpreter is off: set TRITON_INTERPRET=1 before triton is imported "
              f"({PROGRAM} does it)", file=sys.stderr)
        return 2
    if args.suite == models.NAME:
        with _settings(gpu, args.tune):
            return models.main(args)
    suite = SUITES[args.suite]
    timed = gpu and not args.check_only
    if not gpu:
        print("No CUDA GPU: checking every case's correctness in Triton's interpreter on a scaled-down shape; "
              "nothing is timed, and the table has the analytic columns only (FLOPs, bytes, H200 floor).")
    elif args.check_only:
        print("--check-only: checking every case's correctness on the GPU on a scaled-down shape; nothing is timed.")
    dtypes, layouts, modes = (tuple(args.dtype or suite.dtypes), tuple(args.layout or suite.layouts),
                              tuple(m for m in MODES if m in (args.mode or suite.modes)))
    device = torch.device("cuda" if gpu else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (args.out / f"{suite.name}.{ext}" for ext in ("csv", "md", "png"))
    start = time.perf_counter()
    rows: list[dict] = []
    torch.manual_seed(0)  # the same inputs every run, so a failing check can be reproduced
    with _settings(gpu, args.tune):
        ceilings = timing.measure_ceilings(device) if timed else None
        if ceilings is not None:
            print(f"ceilings {ceilings.describe()}")
        run = Run(suite, device, timed, ceilings, report.environment(gpu, args.tune))
        groups = [(c, d, lay) for c in suite.cases for d in dtypes for lay in layouts]
        print(f"{suite.name}: {runs(len(suite.cases), dtypes, layouts, modes)}")
        for i, (case, dtype_name, layout) in enumerate(progress(groups, suite.name, unit="run"), 1):
            if args.budget is not None and time.perf_counter() - start > args.budget:
                rows += [run.row(OPS[case.op], case, case.scaled(), dtype_name, DTYPES[dtype_name], layout, mode,
                                  name, "", "not run (time budget)", {}, 0)
                         for mode in modes for name in (report.OURS, report.THEIRS)]
                continue
            group_start = time.perf_counter()
            group_rows, note = run.group(case, dtype_name, layout, modes)
            rows += group_rows
            write(f"[run {i}/{len(groups)}] {case.op} {case.layer} {dtype_name} {layout}: {note} "
                  f"({time.perf_counter() - group_start:.1f} s)")
            report.write_csv(rows, csv_path)
    df = report.write_csv(rows, csv_path)
    note = (f"Ceilings measured at the start of the run, {ceilings.describe()}." if timed
            else f"Floors at the ceilings of the {timing.H200.describe()}.")
    md_path.write_text(report.markdown(df, suite.name, suite.description, note, timed))
    png_path.unlink(missing_ok=True)  # never leave an earlier run's plot beside this run's tables
    why_no_plot = report.plot_speedups(df, png_path, f"tritonconv vs PyTorch: {suite.name} ({run.env['gpu']})")
    written = [csv_path, md_path] + ([png_path] if why_no_plot is None else [])
    ours = df[df["provider"] == report.OURS]
    bad = ours[~ours["check"].isin(["ok"]) & ~ours["check"].str.startswith("not run")]
    print(report.summary_table(df, timed))
    if why_no_plot:
        print(why_no_plot)
    print(f"{len(groups)} runs ({len(suite.cases)} cases) in {time.perf_counter() - start:.0f} s; "
          f"{len(bad)} of {len(ours)} checks (runs x modes) not correct; wrote " + ", ".join(str(p) for p in written))
    return 1 if len(bad) else 0
