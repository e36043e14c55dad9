"""The `models` suite: whole torchvision networks, converted as a user converts them, against the same
networks unconverted (eager PyTorch and torch.compile).

Each network is built with random weights (nothing is downloaded) and random BatchNorm statistics, and
`tc.convert(copy, fold_batchnorm=True, fuse_separable=True)` is applied to a copy:
- fwd: inference (eval mode, no_grad), converted in eval mode, so BatchNorms fold and pairs fuse;
- fwdbwd: one training step's forward and backward (no optimizer), converted in training mode, so nothing
  folds (the report says so); dropout and stochastic depth are put in eval mode for this step, which makes
  it deterministic and so checkable, with BatchNorm still normalising by the batch.
Each mode is checked first (the output, and for fwdbwd the parameters' gradient) against the unconverted
model: within the dtype's tolerance of the unconverted model in float32 (TF32 off; float64 on the CPU), or
within twice the error of the unconverted model in the run's dtype (`tritonconv.testing.model_mismatch`).
On a GPU each provider is then timed per batch (`bench.timing.time_call`). Without a GPU nothing is
timed: each model is checked in Triton's interpreter at batch 2, 32x32, float32, inference only unless
`--mode fwdbwd` asks for the (much slower) training steps. Without torchvision the suite says so and exits
with 0.

Writes models.csv (one row per model, mode and provider) and models.md (the table and, per model, what
convert replaced, folded, fused and left, with reasons).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import pandas as pd
import torch
from torch import nn

import tritonconv as tc
from tritonconv.testing import model_mismatch, randomise_batchnorm, tolerance

from . import report, timing
from .checking import ieee_float32, reference_dtype
from .suites import DTYPES

NAME = "models"
DESCRIPTION = ("torchvision's mobilenet_v2, efficientnet_b0, convnext_tiny and deeplabv3_mobilenet_v3_large, "
               "converted with fold_batchnorm and fuse_separable, inference and a training step, against eager "
               "PyTorch and torch.compile of the unconverted model")
MODELS = ("mobilenet_v2", "efficientnet_b0", "convnext_tiny", "deeplabv3_mobilenet_v3_large")
PROVIDERS = ("tritonconv", "eager", "torch.compile")
GPU_BATCH, GPU_SIZE = 32, 224
CPU_BATCH, CPU_SIZE = 2, 32  # batch 2: a training-mode BatchNorm needs two values per channel on 1x1 maps
COLUMNS = ["suite", "model", "mode", "provider", "batch", "size", "dtype", "layout", "check", "time_ms",
           "time_p20_ms", "time_p80_ms", "reps", "speedup_vs_eager", "setup_s", "convert", "gpu", "driver", "torch",
           "triton", "cudnn", "python", "tuning", "timestamp"]  # the environment's columns: report.environment


def build(tv, name: str) -> nn.Module:
    """torchvision model `name` with random weights: nothing is downloaded."""
    if name.startswith("deeplabv3"):
        return getattr(tv.models.segmentation, name)(weights=None, weights_backbone=None)
    return getattr(tv.models, name)(weights=None)


def output(y: torch.Tensor | dict) -> torch.Tensor:
    """The tensor a model returns (segmentation models return {"out": ...})."""
    return y["out"] if isinstance(y, dict) else y


def _deterministic_training(model: nn.Module, tv) -> nn.Module:
    """Training mode with dropout and stochastic depth off: BatchNorm uses batch statistics, nothing is random."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d, tv.ops.StochasticDepth)):
            m.eval()
    return model


def _step(model: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], torch.Tensor]:
    """Inference under no_grad, or a training step's forward and backward (loss: mean square of the output)."""
    if not train:
        def infer() -> torch.Tensor:
            with torch.no_grad():
                return output(model(x))
        return infer

    def step() -> torch.Tensor:
        y = output(model(x))
        y.float().square().mean().backward()
        return y
    return step


def _run(model: nn.Module, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The output, and for a training step each parameter's gradient by name."""
    model.zero_grad(set_to_none=True)
    y = _step(model, x, train)().detach()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None} if train else {}
    model.zero_grad(set_to_none=True)
    return y, grads


def check(unconverted: nn.Module, converted: nn.Module, x: torch.Tensor, train: bool, dtype: torch.dtype) -> str:
    """"ok", or what differs: the converted model's output (and, for a training step, the gradient of every
    parameter both models have) against the unconverted model in float32 (TF32 off; float64 on the CPU),
    allowing twice the unconverted model's own error in `dtype` (tritonconv.testing.model_mismatch)."""
    high = reference_dtype(x.device)
    with ieee_float32():
        ref, ref_grads = _run(copy.deepcopy(unconverted).to(high), x.to(high), train)
    eager, eager_grads = _run(unconverted, x, train)
    ours, our_grads = _run(converted, x, train)
    tol = tolerance(dtype, x.device)
    problems = [model_mismatch(ours, eager, ref, tol, "output")]
    # The gradient is checked as one vector over the parameters both models have (folded or fused ones are
    # covered by the output): per parameter, one whose exact gradient is zero (a bias just before a
    # training-mode BatchNorm) would be judged on rounding noise alone.
    names = [n for n in ref_grads if n in dict(converted.named_parameters())]
    missing = [n for n in names if n not in our_grads]
    if missing:
        problems.append(f"no gradient for {', '.join(missing[:5])}")
    elif names:
        flat = [torch.cat([g[n].flatten().to(ref.dtype) for n in names]) for g in (our_grads, eager_grads, ref_grads)]
        wrong = model_mismatch(*flat, tol, "gradient")
        if wrong:
            worst = max(names, key=lambda n: (our_grads[n].to(ref.dtype) - ref_grads[n]).abs().max().item())
            problems.append(f"{wrong} (largest in {worst})")
    problems = [p for p in problems if p]
    return "ok" if not problems else "wrong: " + "; ".join(problems)[:400]


def _convert_summary(model: nn.Module) -> str:
    r = model.tritonconv_report
    return (f"replaced {len(r.replaced)}, folded {len(r.folded)}/{len(r.folded) + len(r.not_folded)} BN, "
            f"fused {len(r.fused)}/{len(r.fused) + len(r.not_fused)} depthwise")


def run_model(tv, name: str, train: bool, dtype: torch.dtype, channels_last: bool, device: torch.device,
              timed: bool, batch: int, size: int) -> tuple[list[dict], str]:
    """Check, then (when `timed`) time, one model in one mode: a row per provider, and convert's report."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unconverted = randomise_batchnorm(build(tv, name)).to(device, dtype, memory_format=fmt)
    if train:
        _deterministic_training(unconverted, tv)
    else:
        unconverted.eval()
    x = torch.randn(batch, 3, size, size, device=device).to(dtype).contiguous(memory_format=fmt)
    start = time.perf_counter()
    converted = tc.convert(copy.deepcopy(unconverted), fold_batchnorm=True, fuse_separable=True)
    status = check(unconverted, converted, x, train, dtype)
    models = {"tritonconv": converted, "eager": unconverted, "torch.compile": torch.compile(unconverted)}
    rows, times = [], {}
    for provider, model in models.items():
        checked = {"tritonconv": status, "eager": "reference", "torch.compile": "not checked (PyTorch's)"}[provider]
        row = {"model": name, "mode": "fwdbwd" if train else "fwd", "provider": provider, "batch": batch,
               "size": size, "check": checked if timed or provider != "torch.compile" else "not run (no GPU)",
               "convert": _convert_summary(converted) if provider == "tritonconv" else ""}
        if timed and (status == "ok" or provider != "tritonconv"):
            try:
                fn = _step(model, x, train)
                setup = time.perf_counter()
                fn()  # the first call compiles (Triton kernels, torch.compile's graph) outside the timing
                row["setup_s"] = time.perf_counter() - setup
                t = timing.time_call(fn, list(model.parameters()) if train else None)
                times[provider] = t.median_ms
                row.update(time_ms=t.median_ms, time_p20_ms=t.p20_ms, time_p80_ms=t.p80_ms, reps=t.reps)
            except Exception as e:  # noqa: BLE001 (a failing provider is a result, not the end of the run)
                row["check"] = f"error: {type(e).__name__}: {str(e).strip()[:200]}"
        rows.append(row)
    for row in rows:
        if row["provider"] in times and "eager" in times:
            row["speedup_vs_eager"] = times["eager"] / times[row["provider"]]
    print(f"{name} {rows[0]['mode']}: check {status}; " + ", ".join(
        f"{p} {times[p]:.2f} ms" for p in PROVIDERS if p in times) + f" ({time.perf_counter() - start:.0f} s)",
        flush=True)
    return rows, str(converted.tritonconv_report)


def markdown(df: pd.DataFrame, reports: dict[str, str], note: str) -> str:
    """The run's report: the table (one line per model, mode and provider), then convert's report per model."""
    env = df.iloc[0] if len(df) else None
    head = [f"# tritonconv benchmark: `{NAME}`", "", DESCRIPTION + ".", ""]
    if env is not None:
        head += [f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, Python {env['python']}, "
                 f"{env['timestamp']}; tritonconv configurations: {env['tuning']}.", ""]
    head += [note, "", "fwd: inference (eval, no_grad); fwdbwd: a training step's forward and backward. Speedup: "
             "eager PyTorch's median time over the provider's. setup s: the first call (compilation) before timing.",
             ""]
    table = df.rename(columns={"time_ms": "ms", "speedup_vs_eager": "speedup vs eager", "setup_s": "setup s"})
    table = table[["model", "mode", "provider", "batch", "size", "dtype", "layout", "ms", "speedup vs eager",
                   "setup s", "check", "convert"]]
    parts = ["\n".join(head), report.markdown_table(table, {"ms": lambda v: f"{v:.2f}",
                                                             "speedup vs eager": lambda v: f"{v:.2f}",
                                                             "setup s": lambda v: f"{v:.1f}"})]
    parts += ["", "## What convert did", ""]
    for key, text in reports.items():
        parts += [f"### {key}", "", "```", text, "```", ""]
    return "\n".join(parts) + "\n"


def main(args: argparse.Namespace) -> int:
    """Run the suite with the CLI's arguments (dtype, layout, mode, out, check_only, tune, budget), inside
    bench.run's settings (cudnn.benchmark on a GPU, tuning as asked); 0 when every converted model checked
    correct or torchvision is missing, 1 otherwise."""
    try:
        import torchvision as tv  # noqa: PLC0415 (optional: only this suite needs it)
    except ImportError as e:
        print(f"The models suite needs torchvision, which does not import here ({e}): nothing to run. Install the "
              "torchvision build that matches your torch (see README, 'Whole models').")
        return 0
    gpu = torch.cuda.is_available()
    timed = gpu and not args.check_only
    device = torch.device("cuda" if gpu else "cpu")
    dtype_name = (args.dtype or ["bf16" if gpu else "fp32"])[0]
    layout = (args.layout or ["channels_last" if gpu else "nchw"])[0]
    batch, size = (GPU_BATCH, GPU_SIZE) if gpu else (CPU_BATCH, CPU_SIZE)
    # In the interpreter a training step of the four models takes many minutes: asked for with --mode only.
    modes = [m for m in ("fwd", "fwdbwd") if m in (args.mode or (("fwd", "fwdbwd") if gpu else ("fwd",)))]
    if gpu:
        note = f"Batch {batch} at {size}x{size}, {dtype_name} {layout}" + ("; timed." if timed else "; checked only.")
    else:
        note = (f"No CUDA GPU: each model checked in Triton's interpreter at batch {batch}, {size}x{size}, "
                f"{dtype_name} {layout}, inference only unless --mode fwdbwd asks for a training step too; nothing "
                "timed, no torch.compile.")
    print(note)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out / f"{NAME}.csv", args.out / f"{NAME}.md"
    env = report.environment(gpu, args.tune)
    rows, reports, start = [], {}, time.perf_counter()
    # Every model's inference first, then the training steps: a time budget cuts training steps first.
    for mode in modes:
        for name in MODELS:
            base = {**env, "suite": NAME, "model": name, "mode": mode, "batch": batch, "size": size,
                    "dtype": dtype_name, "layout": layout}
            if args.budget is not None and time.perf_counter() - start > args.budget:
                rows += [{**base, "provider": p, "check": "not run (time budget)"} for p in PROVIDERS]
            else:
                model_rows, text = run_model(tv, name, mode == "fwdbwd", DTYPES[dtype_name],
                                             layout == "channels_last", device, timed, batch, size)
                rows += [{**base, **r} for r in model_rows]
                reports[f"{name} ({'eval' if mode == 'fwd' else 'training mode'})"] = text
                if gpu:
                    torch.cuda.empty_cache()
            # Written after every model, so a run cut short by a time cap still leaves its tables.
            df = pd.DataFrame(rows, columns=COLUMNS)
            df.to_csv(csv_path, index=False)
            md_path.write_text(markdown(df, reports, note))
    ours = df[df["provider"] == "tritonconv"]
    bad = ours[~ours["check"].eq("ok") & ~ours["check"].str.startswith("not run")]
    print(f"{len(ours)} model runs ({len(MODELS)} models x {len(modes)} modes) in {time.perf_counter() - start:.0f} s; "
          f"{len(bad)} not correct; wrote {csv_path}, {md_path}")
    return 1 if len(bad) else 0
