"""Results: the run's environment, each row's metrics (roofline floor, % of floor, speedup), the tidy CSV,
the markdown summary and the speedup plot.

The markdown is written here rather than by DataFrame.to_markdown, which needs the optional `tabulate`.
The plot needs matplotlib; without it the run says so in one line and writes no PNG.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
import triton

from .timing import Ceilings

# The tidy table's columns: one row per case x dtype x layout x mode x provider.
CASE_COLUMNS = ["n", "c", "h", "w", "f", "k", "stride", "padding", "dilation", "multiplier", "p", "size", "activation"]
ENV_COLUMNS = ["gpu", "driver", "torch", "triton", "cudnn", "python", "tuning", "ceilings", "hbm_tbps",
               "matmul_tflops", "simt_tflops", "timestamp"]
COLUMNS = ["suite", "layer", "op", "shape", "dtype", "layout", "mode", "provider", "backend", "check",
           "time_ms", "time_p20_ms", "time_p80_ms", "reps", "input_sets", "tflops", "gbps", "floor_ms",
           "pct_of_floor", "speedup", "flops", "bytes", "bound", "h200_floor_ms", "checked_shape",
           *CASE_COLUMNS, *ENV_COLUMNS]

OURS, THEIRS = "tritonconv", "pytorch"
# What a user would pick instead, timed beside ours on a GPU (bench/run.py: alternatives).
INDUCTOR, FLAGGEMS = "inductor", "flaggems"


def environment(gpu: bool, tuning: bool) -> dict[str, object]:
    """GPU name, driver, software versions and a UTC timestamp, as columns repeated on every row."""
    driver = "none"
    if gpu:
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
            lines = query.stdout.strip().splitlines() if query.returncode == 0 else []
            driver = lines[0] if lines else "unknown"
        except (OSError, subprocess.SubprocessError):
            driver = "unknown"
    return {"gpu": torch.cuda.get_device_name() if gpu else "none (Triton interpreter)", "driver": driver,
            "torch": torch.__version__, "triton": triton.__version__,
            "cudnn": str(torch.backends.cudnn.version()) if gpu else "none", "python": platform.python_version(),
            "tuning": "autotune new shapes" if tuning else "heuristics and cached tunings",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ---------------------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------------------

def roofline_floor_ms(flops: dict[str, float], nbytes: float, ceilings: Ceilings,
                      dtype: torch.dtype) -> tuple[float, str]:
    """(floor in ms, "memory" or "compute"): no implementation runs faster than the larger of moving
    `nbytes` at the ceilings' bandwidth and doing each unit's FLOPs at that unit's peak."""
    memory = nbytes / ceilings.bandwidth
    compute = max((f / ceilings.peak(unit, dtype) for unit, f in flops.items() if f), default=0.0)
    return 1e3 * max(memory, compute), "memory" if memory >= compute else "compute"


def percent_of_floor(floor_ms: float, time_ms: float) -> float:
    """How close a time is to the roofline floor: 100 means at the floor."""
    return 100.0 * floor_ms / time_ms if time_ms > 0 else math.nan


def geomean(values: Iterable[float]) -> float:
    """Geometric mean of positive values (NaN when there are none): the mean of ratios such as speedups."""
    values = [v for v in values if v == v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Our rows grouped by op, mode, dtype and layout: cases, how many checked correct, and the speedup
    over PyTorch (geometric mean, min, max) and our median % of the roofline floor where timed."""
    keys = ["op", "mode", "dtype", "layout"]
    rows = []
    for key, group in df[df["provider"] == OURS].groupby(keys, sort=False):
        speedup = group["speedup"].dropna()
        rows.append({**dict(zip(keys, key)), "cases": len(group), "correct": int((group["check"] == "ok").sum()),
                     "speedup_geomean": geomean(speedup),
                     "speedup_min": speedup.min() if len(speedup) else math.nan,
                     "speedup_max": speedup.max() if len(speedup) else math.nan,
                     "pct_of_floor_median": group["pct_of_floor"].median()})
    return pd.DataFrame(rows, columns=keys + ["cases", "correct", "speedup_geomean", "speedup_min", "speedup_max",
                                              "pct_of_floor_median"])


# ---------------------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------------------

def markdown_table(df: pd.DataFrame, formats: dict[str, Callable[[object], str]] | None = None) -> str:
    """A GitHub markdown table of `df`, each column through its formatter in `formats` (else str)."""
    formats = formats or {}

    def cell(column: str, value: object) -> str:
        if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):  # NaN, None, pd.NA
            return ""
        return str(formats.get(column, str)(value)).replace("|", "\\|")

    lines = ["| " + " | ".join(df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _fixed(digits: int) -> Callable[[object], str]:
    return lambda v: f"{v:.{digits}f}"


def write_csv(rows: Sequence[dict], path: Path) -> pd.DataFrame:
    """The tidy table, every column in COLUMNS order; returns it."""
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    df.to_csv(path, index=False)
    return df


def markdown(df: pd.DataFrame, suite: str, description: str, ceilings_note: str, timed: bool) -> str:
    """The run's report: environment, per-(op, mode, dtype, layout) summary, and one line per case."""
    env = df.iloc[0] if len(df) else pd.Series(dtype=object)
    head = [f"# tritonconv benchmark: `{suite}`", "", description, ""]
    if len(df):
        driver = f" (driver {env['driver']})" if env["driver"] != "none" else ""
        cudnn = f", cuDNN {env['cudnn']}" if env["cudnn"] != "none" else ""
        head += [f"{env['gpu']}{driver}, torch {env['torch']}, triton {env['triton']}{cudnn}, Python {env['python']}, "
                 f"{env['timestamp']}; tritonconv configurations: {env['tuning']}.", ""]
    head += [ceilings_note, ""]
    if timed:
        head.append("Speedup: PyTorch's median time over ours (above 1: we are faster). Floor: max(bytes / "
                    "bandwidth, FLOPs / peak), counting the fewest bytes the call must move and only the FLOPs "
                    "of taps that read real input; depthwise FLOPs run at the float32 (no tensor core) rate.")
    else:
        head.append("Not timed (no GPU, or --check-only): every case was checked for correctness on a scaled-down "
                    "shape (column `checked on`; in Triton's interpreter when there is no GPU). FLOPs, bytes and "
                    "the floor are for the real layer, at the H200's datasheet ceilings.")
    parts = ["\n".join(head), "", "## Summary", "", summary_table(df, timed)]
    parts += ["", "## Cases", ""]
    ours = df[df["provider"] == OURS].reset_index(drop=True)
    if timed:
        theirs = df[df["provider"] == THEIRS].reset_index(drop=True)
        cases = pd.DataFrame({
            "op": ours["op"], "layer": ours["layer"], "dtype": ours["dtype"], "layout": ours["layout"],
            "mode": ours["mode"],
            "ours ms": ours["time_ms"],
            "p20-p80": [_spread(a, b) for a, b in zip(ours["time_p20_ms"], ours["time_p80_ms"])],
            "PyTorch ms": theirs["time_ms"], "PyTorch runs": theirs["backend"], "speedup": ours["speedup"],
            "% of floor": ours["pct_of_floor"], "bound": ours["bound"], "check": ours["check"]})
        for name in (INDUCTOR, FLAGGEMS):
            other = df[df["provider"] == name].reset_index(drop=True)
            if len(other) == len(ours) and other["time_ms"].notna().any():
                cases.insert(cases.columns.get_loc("speedup"), f"{name} ms", other["time_ms"])
        parts.append(markdown_table(cases, {"ours ms": _fixed(3), "PyTorch ms": _fixed(3), "speedup": _fixed(2),
                                            "% of floor": _fixed(0), f"{INDUCTOR} ms": _fixed(3),
                                            f"{FLAGGEMS} ms": _fixed(3)}))
    else:
        cases = pd.DataFrame({
            "op": ours["op"], "layer": ours["layer"], "shape": ours["shape"], "dtype": ours["dtype"], "layout": ours["layout"],
            "mode": ours["mode"], "GFLOP": ours["flops"] / 1e9, "MB": ours["bytes"] / 1e6,
            "H200 floor us": ours["h200_floor_ms"] * 1e3, "bound": ours["bound"],
            "checked on": ours["checked_shape"], "check": ours["check"]})
        parts.append(markdown_table(cases, {"GFLOP": _fixed(2), "MB": _fixed(1), "H200 floor us": _fixed(1)}))
    return "\n".join(parts) + "\n"


def summary_table(df: pd.DataFrame, timed: bool) -> str:
    """The summary as a markdown table: with speedups and % of floor when timed, else checks only."""
    table = summary(df)
    if not timed:
        return markdown_table(table[["op", "mode", "dtype", "layout", "cases", "correct"]])
    table = table.rename(columns={"speedup_geomean": "speedup geomean", "speedup_min": "min", "speedup_max": "max",
                                  "pct_of_floor_median": "our % of floor (median)"})
    return markdown_table(table, {"speedup geomean": _fixed(2), "min": _fixed(2), "max": _fixed(2),
                                  "our % of floor (median)": _fixed(0)})


def _spread(p20: float, p80: float) -> str:
    return "" if p20 != p20 else f"{p20:.3f}-{p80:.3f}"


def plot_speedups(df: pd.DataFrame, path: Path, title: str) -> str | None:
    """Horizontal bars of our speedup over PyTorch per op and layer, dtype, layout and mode (log scale, a line at
    1). Returns why no plot was written, or None."""
    ours = df[(df["provider"] == OURS) & df["speedup"].notna()]
    if ours.empty:
        return "no timed rows: no plot"
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency)
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        import matplotlib.ticker  # noqa: PLC0415
    except ImportError:
        return "matplotlib is not installed: no plot"
    labels = [f"{r.op}: {r.layer}  {r.dtype} {r.layout} {r.mode}" for r in ours.itertuples()]
    colors = ["tab:blue" if m == "fwd" else "tab:orange" for m in ours["mode"]]
    speedup = ours["speedup"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * len(ours)))
    # Bars grow from 1 (as fast as PyTorch): right when we are faster, left when slower.
    ax.barh(range(len(ours)), speedup - 1.0, left=1.0, color=colors)
    for y, s in enumerate(speedup):
        ax.annotate(f"{s:.2f}", (s, y), xytext=(3 if s >= 1 else -3, 0), textcoords="offset points",
                    ha="left" if s >= 1 else "right", va="center", fontsize=6)
    ax.set_yticks(range(len(ours)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    span = max(2.0, float(max(speedup.max(), 1 / speedup.min())) * 1.4)
    ax.set_xlim(1 / span, span)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speedup over PyTorch (PyTorch time / ours; blue: forward, orange: forward+backward)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
