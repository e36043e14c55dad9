"""The benchmark suite: the quick suite checks every op and writes its tables; metrics arithmetic; CLI;
the checks reject wrong ops."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bench import models, report, timing
from bench.adapters import OPS, Case, live_pairs
from bench.run import Run, main
from bench.suites import SUITES
from conftest import DEVICE
from tritonconv._checks import output_size

ROOT = Path(__file__).resolve().parents[1]


def test_quick_suite_checks_every_op_and_writes_tables(tmp_path):
    """The CI mode: every case checked on its scaled-down shape (in Triton's interpreter without a GPU),
    the CSV in the tidy format with the analytic columns filled, the markdown report written."""
    assert main(["--suite", "quick", "--check-only", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "quick.csv")
    assert list(df.columns) == report.COLUMNS
    suite = SUITES["quick"]
    assert set(df["op"]) == set(OPS) == {c.op for c in suite.cases}
    assert len(df) == len(suite.cases) * len(suite.dtypes) * len(suite.layouts) * len(suite.modes) * 2
    ours, theirs = df[df["provider"] == report.OURS], df[df["provider"] == report.THEIRS]
    assert (ours["check"] == "ok").all(), ours.loc[ours["check"] != "ok", ["layer", "mode", "check"]].to_string()
    # PyTorch is the reference for deterministic ops; its random compositions pass the same invariants.
    assert theirs["check"].isin(["ok", "reference"]).all(), theirs["check"].unique()
    assert (df["bytes"] > 0).all() and (df["h200_floor_ms"] > 0).all() and df["time_ms"].isna().all()
    assert (df.loc[df["op"].str.contains("conv"), "flops"] > 0).all()
    fwdbwd, fwd = (ours[ours["mode"] == m].set_index("layer") for m in ("fwdbwd", "fwd"))
    assert (fwdbwd["bytes"] > fwd["bytes"]).all() and (fwdbwd["flops"] == 3 * fwd["flops"]).all()
    text = (tmp_path / "quick.md").read_text()
    assert "## Summary" in text and "## Cases" in text
    assert all(f"| {op} |" in text for op in OPS)


def test_timed_rows_with_a_stand_in_timer(monkeypatch, tmp_path):
    """The GPU path's bookkeeping, run where there is no GPU: a stand-in timer (ours 1 ms, PyTorch 3 ms) and
    the datasheet ceilings. Every timed call still runs, over the rotating input sets."""
    calls = []

    def fake_time(fn, grad_to_none=None, warmup_ms=25, rep_ms=100):
        fn()
        calls.append(grad_to_none is not None)
        return timing.Timing(*((1.0, 0.9, 1.1) if len(calls) % 2 else (3.0, 2.8, 3.3)), reps=10)

    monkeypatch.setattr(timing, "time_call", fake_time)
    monkeypatch.setattr(timing, "l2_bytes", lambda device: 10_000)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**34, 2**34))
    run = Run(SUITES["quick"], torch.device(DEVICE), True, timing.H200, report.environment(False, False))
    case = Case("conv2d", "small conv", 2, 3, 9, 9, f=4, k=3, padding=2, dilation=2)
    rows, note = run.group(case, "fp32", "channels_last", ("fwd", "fwdbwd"))
    assert calls == [False, False, True, True] and "x3.00" in note
    df = pd.DataFrame(rows, columns=report.COLUMNS)
    ours = df[df["provider"] == report.OURS].set_index("mode")
    assert (ours["speedup"] == 3.0).all() and (ours["input_sets"] > 1).all()
    floor = ours.loc["fwd", "floor_ms"]
    assert ours.loc["fwd", "pct_of_floor"] == pytest.approx(100 * floor / 1.0)
    assert ours.loc["fwd", "tflops"] == pytest.approx(ours.loc["fwd", "flops"] / 1e-3 / 1e12)
    assert ours.loc["fwd", "gbps"] == pytest.approx(ours.loc["fwd", "bytes"] / 1e-3 / 1e9)
    text = report.markdown(df, "quick", "test", "ceilings", timed=True)
    assert "| conv2d | small conv | fp32 | channels_last | fwd | 1.000 | 0.900-1.100 | 3.000 |" in text
    why = report.plot_speedups(df, tmp_path / "plot.png", "test")
    assert why is None and (tmp_path / "plot.png").stat().st_size > 0 or why.startswith("matplotlib is not")


def test_roofline_floor_takes_the_slower_of_memory_and_each_unit():
    ceilings = timing.Ceilings(1e12, {"float16": 100e12, "bfloat16": 100e12, "tf32": 50e12, "float32": 10e12}, "test")
    # 2 GB at 1 TB/s = 2 ms; 1e11 tensor FLOPs at 100 TFLOP/s = 1 ms.
    assert report.roofline_floor_ms({"tensor": 1e11}, 2e9, ceilings, torch.float16) == (pytest.approx(2.0), "memory")
    # 1e12 FLOPs: 10 ms; the same FLOPs without tensor cores run at 10 TFLOP/s: 100 ms.
    assert report.roofline_floor_ms({"tensor": 1e12}, 2e9, ceilings, torch.bfloat16) == (pytest.approx(10.0), "compute")
    both = report.roofline_floor_ms({"simt": 1e12, "tensor": 1e12}, 2e9, ceilings, torch.float16)
    assert both == (pytest.approx(100.0), "compute")
    assert report.roofline_floor_ms({}, 4e9, ceilings, torch.float16) == (pytest.approx(4.0), "memory")


def test_float32_tensor_math_uses_tf32_only_when_cudnn_may(monkeypatch):
    ceilings = timing.Ceilings(1e12, {"float16": 100e12, "bfloat16": 100e12, "tf32": 50e12, "float32": 10e12}, "test")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert ceilings.peak("tensor", torch.float32) == 50e12
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert ceilings.peak("tensor", torch.float32) == 10e12
    assert ceilings.peak("simt", torch.bfloat16) == 10e12


def test_percent_of_floor_and_geomean():
    assert report.percent_of_floor(2.0, 4.0) == 50.0
    assert report.percent_of_floor(1.0, 1.0) == 100.0
    assert math.isnan(report.percent_of_floor(1.0, 0.0))
    assert report.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert report.geomean([0.5, 2.0, float("nan")]) == pytest.approx(1.0)
    assert math.isnan(report.geomean([]))


def test_summary_groups_our_rows():
    rows = [dict(op="conv2d", mode="fwd", dtype="bf16", layout="channels_last", provider=p, check=c,
                 speedup=s, pct_of_floor=f)
            for p, c, s, f in [(report.OURS, "ok", 2.0, 40.0), (report.OURS, "ok", 8.0, 60.0),
                               (report.OURS, "wrong: forward", None, None), (report.THEIRS, "reference", 1.0, 30.0)]]
    table = report.summary(pd.DataFrame(rows))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["cases"], row["correct"]) == (3, 2)
    assert (row["speedup_geomean"], row["speedup_min"], row["speedup_max"]) == (pytest.approx(4.0), 2.0, 8.0)
    assert row["pct_of_floor_median"] == 50.0
    text = report.markdown_table(table, {"speedup_geomean": lambda v: f"{v:.2f}"})
    assert text.splitlines()[0].startswith("| op | mode |") and "| 4.00 |" in text


def test_rotation_sets_cover_four_l2s_within_memory():
    mb = 2**20
    assert timing.rotation_sets(10 * mb, 50 * mb, 100 * 2**30) == 20
    assert timing.rotation_sets(mb, 50 * mb, 100 * 2**30) == 64
    assert timing.rotation_sets(500 * mb, 50 * mb, 100 * 2**30) == 1
    assert timing.rotation_sets(10 * mb, 50 * mb, 80 * mb) == 2


def test_live_pairs_skip_padding_taps():
    # ASPP at d=36 on a 65-pixel axis: the outer taps read real input for 29 of 65 outputs each.
    assert live_pairs(65, 3, 1, 36, 36) == 29 + 65 + 29
    assert live_pairs(9, 3, 2, 0, 1) == output_size(9, 3, 2, 0, 1) * 3


def test_every_case_scales_to_a_valid_small_shape():
    for suite in SUITES.values():
        for case in suite.cases:
            small = case.scaled()
            assert small.n <= 2 and small.c <= 19 and small.h <= max(15, 7 + case.h // 32), case
            op = OPS[case.op]
            assert min(op.out_shape(small)) >= 1 and min(op.out_shape(case)) >= 1, case
            if case.op in ("drop_block2d", "cutout2d"):
                assert 1 <= small.size <= min(small.h, small.w), case


def _check(op_name: str, case: Case, provider, backward: bool = True) -> tuple[list[str], list[str]]:
    op = OPS[op_name]
    t = op.inputs(case, torch.float32, False, torch.device(DEVICE), requires_grad=backward)
    return op.check(case, t, provider, backward)


def test_checks_reject_wrong_ops():
    """A check that cannot fail proves nothing: slightly wrong versions of each kind of op must fail."""
    conv = Case("conv2d", "test", 2, 3, 9, 9, f=4, k=3, padding=2, dilation=2)
    assert _check("conv2d", conv, lambda c, t, s: F.conv2d(t["x"], t["weight"], t["bias"], 1, 2, 2))[0] == []
    assert _check("conv2d", conv, lambda c, t, s: F.conv2d(t["x"], t["weight"], t["bias"], 1, 2, 2) * 1.01)[0]

    drop = Case("dropout", "test", 4, 16, 20, 20, p=0.3)
    theirs = OPS["dropout"].theirs
    assert _check("dropout", drop, theirs) == ([], [])
    rescaled = _check("dropout", drop, lambda c, t, s: theirs(c, t, s) * 1.01 if c.p else t["x"])[0]
    assert any("survivors" in f for f in rescaled)
    too_many = _check("dropout", drop, lambda c, t, s: theirs(dataclasses.replace(c, p=0.4), t, s) if c.p else t["x"])
    assert any("dropped elements" in f for f in too_many[0])

    block = Case("drop_block2d", "test", 4, 8, 20, 20, p=0.2, size=5)
    smaller = _check("drop_block2d", block,
                     lambda c, t, s: OPS["drop_block2d"].theirs(dataclasses.replace(c, size=3), t, s))
    assert any("union of 5x5 blocks" in f for f in smaller[0])

    pool = Case("max_pool2d_dropout", "test", 4, 8, 16, 16, k=3, stride=2, padding=1, p=0.5)
    assert _check("max_pool2d_dropout", pool, OPS["max_pool2d_dropout"].theirs) == ([], [])
    ignores_p = _check("max_pool2d_dropout", pool, lambda c, t, s: F.max_pool2d(t["x"], 3, 2, 1))
    assert any("window max" in f for f in ignores_p[0])


def test_cli_lists_suites():
    result = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in SUITES)
    assert main(["--list", "--suite", "deeplab"]) == 0


def _tiny_torchvision():
    """A stand-in for torchvision with one small model (a stem conv -> BN -> ReLU6 and an inverted-residual
    pair), so the models suite's logic runs without torchvision."""
    from types import SimpleNamespace

    from torch import nn

    def tiny(weights=None):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU6(),
                             nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU6(),
                             nn.Conv2d(4, 6, 1), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1))

    return SimpleNamespace(models=SimpleNamespace(tiny=tiny), ops=SimpleNamespace(StochasticDepth=nn.Dropout))


@pytest.mark.parametrize("train", [False, True])
def test_models_suite_checks_and_times_a_converted_model(monkeypatch, train):
    """Inference folds and fuses; a training step folds nothing and checks the gradient. With a stand-in
    timer (ours 1 ms, eager 2 ms, torch.compile 4 ms) every provider gets a row and a speedup."""
    times = iter([1.0, 2.0, 4.0])
    monkeypatch.setattr(timing, "time_call", lambda fn, grads=None: (fn(), timing.Timing(next(times), 0.9, 1.1, 5))[1])
    monkeypatch.setattr(torch, "compile", lambda model: model)
    rows, text = models.run_model(_tiny_torchvision(), "tiny", train, torch.float32, False, torch.device(DEVICE),
                                  True, 2, 6)
    ours, eager, compiled = rows
    assert ours["check"] == "ok" and eager["check"] == "reference", ours["check"]
    assert [r["speedup_vs_eager"] for r in rows] == [2.0, 1.0, 0.5]
    if train:
        assert ours["convert"].startswith("replaced 4, folded 0/2 BN") and "training mode" in text
    else:
        assert ours["convert"] == "replaced 2, folded 2/2 BN, fused 1/1 depthwise"


def test_models_suite_without_torchvision_says_so_and_exits_cleanly(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    assert main(["--suite", "models", "--out", str(tmp_path)]) == 0
    assert "needs torchvision, which does not import here" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
