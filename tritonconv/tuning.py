"""Ahead-of-time tuning of a whole model, and `explain`: what a call runs and why."""

from __future__ import annotations

from typing import Callable

import torch

from tritonconv import dispatch


class Explanation(dict):
    """What one op call runs: for each kernel launch, its family, configuration and where it came from.

    A dict (``explanation["launches"][0]["config"]``) whose ``str`` reads as a short report.
    """

    def __str__(self) -> str:
        lines = [f"{self['op']}: {self['family']}"]
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
    tunes; a cached configuration shows as "cache".
    """
    if isinstance(op, str):
        import tritonconv  # noqa: PLC0415 (the package imports this module)

        op = getattr(tritonconv, op)
    with torch.no_grad(), dispatch.tuning(False), dispatch.recording() as decisions:
        op(*args, **kwargs)
    launches = [_describe(d) for d in decisions]
    families = sorted({launch["family"] for launch in launches})
    return Explanation(op=getattr(op, "__name__", str(op)), family="+".join(families) or "none", launches=launches)


def tune(model: torch.nn.Module | Callable, *example_inputs, backward: bool = True):
    """Run `model(*example_inputs)` once (and its backward on the sum of its outputs when `backward`)
    with tuning forced on, so every kernel shape the model uses is tuned and cached ahead of time.

    Returns a pandas DataFrame with one row per distinct kernel launch: kernel, family, shape bucket,
    configuration, source ("tuned", "cache", or "heuristic" in Triton's interpreter, which cannot tune),
    best time and tuning seconds.
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
    return pd.DataFrame(list(rows.values()), columns=["kernel", "family", "shape", "config", "source", "time_ms",
                                                      "tune_seconds"])
