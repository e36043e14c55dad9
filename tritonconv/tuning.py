"""Ahead-of-time tuning of a whole model, and `explain`: what a call runs and why."""

from __future__ import annotations

import inspect
import warnings
from typing import Callable

import torch

from tritonconv import dispatch
from tritonconv._checks import interpreting


class Explanation(dict):
    """What one op call runs: for each kernel launch, its family, configuration and where it came from.

    A dict (``explanation["launches"][0]["config"]``) whose ``str`` reads as a short report.
    """

    def __str__(self) -> str:
        lines = [f"{self['op']}: {self['family']}"]
        if self.get("backend"):
            lines.append(f"  backend: {self['backend']}")
        for launch in self["launches"]:
            lines.append(f"  {launch['kernel']} [{launch['shape']}]")
            lines.append(f"    config: {launch['config']}")
            lines.append(f"    from:   {launch['source']}")
        return "\n".join(lines)


def _describe(decision: dispatch.Decision) -> dict:
    source = decision.source
    if source == "heuristic" and dispatch.tuning_allowed():
        source += " (a call with tuning on times the candidates on first use)"
    return {"kernel": decision.problem.kernel, "family": decision.family, "shape": decision.problem.bucket(),
            "config": "PyTorch's op" if decision.backend == "torch" else str(decision.config),
            "source": source, "time_ms": decision.time_ms}


def explain(op: Callable | str, *args, **kwargs) -> Explanation:
    """What `op(*args, **kwargs)` runs: kernel family, configuration, and whether that configuration came
    from the heuristic, the cache or tuning.

    The call runs once, forward only, under `torch.no_grad()` and with tuning off, so explaining never
    tunes; a cached configuration shows as "cache". For an op with a `backend` argument, "backend" says
    whose op runs and why (with "auto": PyTorch's when timing chose it, else ours, and why).
    """
    if isinstance(op, str):
        import tritonconv  # noqa: PLC0415 (the package imports this module)

        op = getattr(tritonconv, op)
    with torch.no_grad(), dispatch.tuning(False), dispatch.recording() as decisions:
        op(*args, **kwargs)
    launches = [_describe(d) for d in decisions]
    families = sorted({launch["family"] for launch in launches})
    return Explanation(op=getattr(op, "__name__", str(op)), family="+".join(families) or "none", launches=launches,
                       backend=_backend_reason(op, kwargs.get("backend"), decisions))


def _backend_reason(op: Callable, backend: str | None, decisions: list[dispatch.Decision]) -> str | None:
    """Whose op a call with `backend` ran and why; None for an op without a backend choice."""
    try:
        if "backend" not in inspect.signature(op).parameters:
            return None
    except (TypeError, ValueError):  # a callable without a signature: no backend argument to explain
        return None
    backend = backend or dispatch.get_backend()
    if backend == "triton":
        return "tritonconv's kernels (backend \"triton\", the default)"
    if any(d.backend == "torch" for d in decisions):
        return "PyTorch's op: backend \"auto\" timed it faster than ours for this shape"
    if interpreting():
        return ("tritonconv's kernels: backend \"auto\" times PyTorch's op against ours on a GPU, and Triton's "
                "interpreter (no GPU) cannot time, so it runs ours")
    return ("tritonconv's kernels: backend \"auto\" timed them faster for this shape, or has not timed it yet "
            "(explain never times; with tuning on, the first call of a shape times both)")


def tune(model: torch.nn.Module | Callable, *example_inputs, backward: bool = True):
    """Run `model(*example_inputs)` once (and its backward on the sum of its outputs when `backward`)
    with tuning forced on, so every kernel shape the model uses is tuned and cached ahead of time.

    Returns a pandas DataFrame with one row per distinct kernel launch: kernel, family, shape bucket,
    configuration, source ("tuned", "cache", or "heuristic" in Triton's interpreter, which cannot tune),
    best time and tuning seconds. When nothing could be tuned (no GPU, or no tritonconv kernel ran) it
    warns why, and the DataFrame's `attrs["note"]` says the same.
    """
    import pandas as pd  # noqa: PLC0415 (a dependency, but only tuning needs it)

    with dispatch.tuning(True), dispatch.recording() as decisions:
        outputs = model(*example_inputs)
        if backward:
            tensors = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            loss = sum(t.float().sum() for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad)
            if isinstance(loss, torch.Tensor):
                loss.backward()
    rows = {}
    for d in decisions:
        rows.setdefault((d.problem, d.backend), {
            "kernel": d.problem.kernel, "family": d.family, "shape": d.problem.bucket(),
            "config": "PyTorch's op" if d.backend == "torch" else str(d.config), "source": d.source,
            "time_ms": d.time_ms, "tune_seconds": round(d.tune_seconds, 3)})
    table = pd.DataFrame(list(rows.values()), columns=["kernel", "family", "shape", "config", "source", "time_ms",
                                                       "tune_seconds"])
    note = None
    if not rows:
        note = ("nothing was tuned: the model ran no tritonconv kernel (convert it first: "
                "model = tritonconv.convert(model))")
    elif interpreting():
        note = ("nothing was tuned: Triton's interpreter (no GPU; TRITON_INTERPRET=1) cannot time kernels, so every "
                "row is the heuristic configuration. Run tune on the GPU the model will run on.")
    if note is not None:
        table.attrs["note"] = note
        warnings.warn(note, stacklevel=2)
    return table
