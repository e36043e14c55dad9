"""Static GPU checks without a GPU (bench/static.py): the configuration the dispatcher picks for every
registered kernel compiles for sm_90 and sm_80 on the CPU, fits shared memory and spills nothing, and the
GEMM-shaped kernels reach Hopper's tensor cores (HGMMA) in fp16 and bf16."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import background
from tritonconv import dispatch

TARGETS = ["sm_90", "sm_80"]
DTYPES = {"float32", "float16", "bfloat16"}
SHOWN = ["target", "kernel", "dtype", "shapes", "config", "registers", "spill_store_bytes", "shared_bytes",
         "hgmma", "verdict", "error"]


_REPORT = background("report", "bench.static", "--space", "heuristic", "--quick", "--target", *TARGETS)


@pytest.fixture(scope="module")
def report() -> pd.DataFrame:
    """One run of `python -m bench.static` for both targets, in the background from the start of the session
    (conftest.background)."""
    proc, out = _REPORT.result()
    assert (out / "static.csv").exists(), f"no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return pd.read_csv(out / "static.csv")


def _library_kernels() -> list[str]:
    """The registered kernels of tritonconv itself (tests register fakes of their own)."""
    return [k for k in dispatch.kernels()
            if getattr(dispatch.spec(k).fn, "fn", dispatch.spec(k).fn).__module__.startswith("tritonconv.")]


def _show(rows: pd.DataFrame) -> str:
    return "\n" + rows[SHOWN].astype(object).fillna("").to_string(index=False)


def test_every_registered_kernel_is_probed_in_every_dtype(report):
    for target in TARGETS:
        rows = report[(report["target"] == target) & (report["verdict"] != "no-probe")]
        for kernel in _library_kernels():
            dtypes = set(rows.loc[rows["kernel"] == kernel, "dtype"])
            assert dtypes == DTYPES, (
                f"{target}: kernel {kernel!r} was compiled for {sorted(dtypes)}, not {sorted(DTYPES)}: add a probe "
                f"to PROBES in bench/static.py or fix the failing one{_show(report[report['kernel'] == kernel])}")


@pytest.mark.parametrize("target", TARGETS)
def test_heuristic_configs_compile_fit_shared_memory_and_do_not_spill(report, target):
    rows = report[report["target"] == target]
    assert len(rows) > 0
    bad = rows[rows["verdict"] != "ok"]
    assert bad.empty, f"{target}: {len(bad)} of {len(rows)} heuristic configurations fail{_show(bad)}"


def test_gemm_kernels_use_hgmma_on_sm90_in_16_bit(report):
    rows = report[(report["target"] == "sm_90") & report["gemm"] & report["dtype"].isin(["float16", "bfloat16"])]
    assert {"conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad"} <= set(rows["kernel"])
    no_hgmma = rows[~(rows["hgmma"] > 0)]
    assert no_hgmma.empty, f"GEMM-shaped kernels without HGMMA on sm_90{_show(no_hgmma)}"


def test_rejects_apply_only_to_the_source_they_were_found_with(tmp_path, monkeypatch):
    from tritonconv import static_checks

    config = {"meta": {"BLOCK_K": 64, "BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, "num_warps": 4, "num_stages": 4}
    current = dispatch.spec("conv2d_forward").source_hash()
    entries = [{"target": "sm_90", "kernel": "conv2d_forward", "dtype": "torch.float16", "layout": layout,
                "verdict": "spills", "source": source, **config}
               for layout, source in (("nhwc", current), ("nchw", "an-older-kernel"))]
    path = tmp_path / "static_rejects.json"
    path.write_text(json.dumps({"rejects": entries}))
    monkeypatch.setattr(static_checks, "REJECTS_PATH", path)
    static_checks.static_rejects.cache_clear()
    try:
        rejects = static_checks.static_rejects("sm_90")
    finally:
        static_checks.static_rejects.cache_clear()
    assert rejects == {("conv2d_forward", "torch.float16", True): frozenset({dispatch.Config.from_json(config)})}


_TMA_CANDIDATE = background("tma_candidate", "bench.static", "--quick", "--kernel", "conv2d_forward", "--dtype",
                            "float16", "--target", "sm_90", "--also", "B_DESCRIPTOR=1")


@pytest.fixture
def tma_candidate() -> Path:
    proc, out = _TMA_CANDIDATE.result()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_conv_forward_tma_candidate_compiles_for_sm90_without_spills(tma_candidate):
    """`--also B_DESCRIPTOR=1` compiles the conv forward's TMA weight loads (a tuning candidate that no GPU
    has run yet) beside its heuristic configuration: both layouts, with tensor cores and no spills."""
    rows = pd.read_csv(tma_candidate / "static.csv")
    candidates = rows[~rows["heuristic"]]
    assert set(candidates["layout"]) == {"nchw", "nhwc"} and candidates["config"].str.contains("B_DESCRIPTOR=1").all()
    bad = candidates[(candidates["verdict"] != "ok") | ~(candidates["hgmma"] > 0)]
    assert bad.empty, _show(bad)
