"""The cost model (bench/cost.py, bench/sass.py): the SASS reader and the model on small synthetic SASS,
the budget check, and one `python -m bench.cost --quick --dtype bfloat16` run whose predictions must stay
within bench/cost_budget.json.

CI runs the bfloat16 third of the quick set: the whole set compiles about 50 reference kernels more
than tests/test_static.py does (several minutes on 2 cores when Triton's cache is cold), the bfloat16
third about 17. The budget file holds every dtype; `python -m bench.cost --quick` checks them all."""

import math
import subprocess

import pandas as pd
import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from bench import cost, sass, static
from conftest import background
from tritonconv import dispatch


def _sass(*lines: str) -> str:
    """A cuobjdump-style dump of one function: each line is '[@P0 ]OPCODE operands', at addresses 0x0,
    0x10, ...; 'BRA <index>' branches to the instruction of that index."""
    out = ["Resource usage:", " Function toy_kernel:", "  REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:560",
           "", "\tcode for sm_90a", "\t\tFunction : toy_kernel"]
    for i, line in enumerate(lines):
        *guard, text = line.split(" ", 1) if line.startswith("@") else ("", line)
        if text.startswith("BRA "):
            text = f"BRA 0x{int(text.split()[1]) * 16:x}"
        out.append(f"        /*{i * 16:04x}*/              {''.join(guard):>4} {text} ;   /* 0x000000 */")
        out.append("                                                   /* 0x000fe2 */")
    return "\n".join(out)


# An outer loop (1..8) holding an inner pipelined loop (3..6), the pipeline drained in the outer body.
NEST = _sass(
    "LDC R1, c[0x0][0x28]",                       # 0
    "I2F.RP R5, R4",                              # 1  a division before the loops
    "LDGSTS.E.BYPASS.128 [R5], desc[UR4][R2.64]",  # 2  outer body: prologue
    "DEPBAR.LE SB0, 0x1",                         # 3  inner loop head
    "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0",
    "WARPGROUP.DEPBAR.LE gsb0, 0x1",
    "@P0 BRA 3",                                  # 6  inner back edge
    "WARPGROUP.DEPBAR.LE gsb0, 0x0",              # 7  outer body: drain
    "@P1 BRA 2",                                  # 8  outer back edge
    "EXIT",
    "BRA 10",                                     # 10 the trap after EXIT: not a loop
)


def test_regions_nest_loops_by_backward_branches():
    f = sass.parse(NEST)
    assert (f.name, f.registers, f.stack) == ("toy_kernel", 40, 0)
    assert [(r.index, r.parent, r.depth, r.head, r.tail) for r in f.loops] == [(1, 0, 1, 0x20, 0x80),
                                                                                (2, 1, 2, 0x30, 0x60)]
    assert [r.count for r in f.regions] == [4, 3, 4]
    assert [r.index for r in f.nest(1)] == [1, 2]


def test_two_back_edges_to_one_head_are_one_loop():
    f = sass.parse(_sass("MOV R1, R2", "IADD3 R1, R1, 0x1, RZ", "@P0 BRA 1", "@P1 BRA 1", "EXIT"))
    assert [(r.head, r.tail) for r in f.loops] == [(0x10, 0x30)]


def test_an_out_of_line_wait_after_the_last_exit_is_not_a_loop():
    """A TMA load's mbarrier wait retries in a block after the kernel's end, then branches back into the
    loop that took it: neither back edge is a loop of the kernel."""
    f = sass.parse(_sass("MOV R1, R2",
                         "@!P0 BRA 5",                                            # 1  loop head: wait not over
                         "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0",
                         "@P1 BRA 1",                                             # 3  the loop's back edge
                         "EXIT",
                         "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR10+0xc000], R20",  # 5  the slow path
                         "@!P0 BRA 5",
                         "BRA 2",
                         "BRA 8"))
    assert [(r.head, r.tail) for r in f.loops] == [(0x10, 0x30)]


@pytest.mark.parametrize("line, kind", [
    ("LDG.E.128 R4, desc[UR4][R2.64]", "ldg.128"), ("LDG.E.U16 R4, desc[UR4][R2.64]", "ldg.16"),
    ("LDG.E.64 R4, desc[UR4][R2.64]", "ldg.64"), ("LDG.E R4, desc[UR4][R2.64]", "ldg.32"),
    ("LDG.E.U8 R4, desc[UR4][R2.64]", "ldg.8"), ("LDGSTS.E.BYPASS.LTC128B.128 [R5], desc[UR4][R2.64]", "ldgsts.128"),
    ("HGMMA.64x128x16.F32.F16 R24, gdesc[UR8], R24", "hgmma.64x128x16"), ("HMMA.16816.F32.BF16 R4, R8, R12, R4", "hmma"),
    ("UTMALDG.2D [UR8], [UR4]", "tma"), ("LDSM.16.M88.4 R4, [R2]", "lds"), ("STS.128 [R2], R4", "sts"),
    ("FFMA R1, R2, R3, R1", "ffma"), ("HFMA2 R1, R2, R3, R1", "half2"), ("IMAD.WIDE R2, R3, 0x2, R4", "int"),
    ("MUFU.RCP R1, R2", "mufu"), ("BAR.SYNC.DEFER_BLOCKING 0x0", "barrier"), ("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5", "atomic"),
    ("STG.E.64 desc[UR4][R2.64], R4", "stg.64"), ("STL [R1], R2", "stl"), ("LDL R2, [R1]", "ldl"),
    ("WARPGROUP.DEPBAR.LE gsb0, 0x1", "wgmma_wait"), ("DEPBAR.LE SB0, 0x2", "cp_async_wait"),
    ("@!PT LDS RZ, [RZ]", "nop"), ("@P0 LDS R1, [R2]", "lds"),
])
def test_instruction_kinds(line, kind):
    (ins,) = sass.instructions(_sass(line))
    assert sass.kind(ins) == kind


def test_waits_divisions_and_philox_rounds():
    code = sass.instructions(_sass("WARPGROUP.DEPBAR.LE gsb0, 0x0", "DEPBAR.LE SB0, 0x2", "I2F.U32.RP R1, R2",
                                   "I2FP.F32.S32 R1, R2", "IMAD.HI.U32 R1, R2, -0x2daee0ad, RZ",
                                   "IMAD R1, R2, -0x2daee0ad, RZ"))
    assert [sass.wait_depth(ins) for ins in code[:2]] == [0, 2]
    assert [sass.is_divide_start(ins) for ins in code[2:4]] == [True, False]
    assert [sass.is_philox_round(ins) for ins in code[4:]] == [True, False]


def test_trip_counts_drop_loops_compiled_away():
    f = sass.parse(NEST)
    assert cost.executions(f, (1, 3, 5)) == ([1.0, 3.0, 15.0], True)   # the leading 1 was specialised away
    runs, matched = cost.executions(f, (3,))
    assert (runs, matched) == ([1.0, 3.0, 3.0], False)


def _launch(dtype: torch.dtype = torch.bfloat16, programs: int = 264, warps: int = 4) -> static.Launch:
    return static.Launch("toy", "toy", dispatch.Problem("toy", 1, dtype=dtype), dispatch.Config.of(), True,
                         "toy:toy_kernel", (), (), (), (("num_warps", warps),), (programs,), (), False)


def _flags(c: cost.Cost) -> set[str]:
    return {f.split(":")[0] for f in c.flags}


def test_model_counts_each_region_per_execution_and_takes_the_largest_time():
    f = sass.parse(NEST)
    c = cost.model(_launch(), f, (3, 5), shared=0, spills=0, nbytes=0, values=0)
    # Per program, per warp: 4 top-level + 3 x 3 outer + 15 x 4 inner instructions; 4 warps.
    assert c.warp_instr == 4 * (4 + 3 * 3 + 15 * 4)
    # 15 HGMMA 64x64x16 per warpgroup (4 warps = one); bf16 at 790 TFLOP/s = 395e12 MAC/s over 132 SMs.
    assert c.macs == {"BF16": pytest.approx(15 * 64 * 64 * 16)}
    per_sm = math.ceil(264 / 132)
    assert c.tensor_us == pytest.approx(per_sm * 15 * 64 * 64 * 16 / (395e12 / 132) * 1e6)
    assert c.issue_us == pytest.approx(per_sm * c.warp_instr / (4 * 1.98e9) * 1e6)
    assert c.predicted_us == max(c.issue_us, c.tensor_us, c.hbm_us, c.latency_us)
    assert _flags(c) == {"pipeline-drain", "under-two-waves"}


def test_flags_division_scalar_loads_wgmma_wait_and_atomics_in_a_hot_loop():
    f = sass.parse(_sass("MOV R1, R2", "I2F.RP R5, R4", "MUFU.RCP R5, R5",
                         *["LDG.E.U16 R4, desc[UR4][R2.64]"] * 4, "HGMMA.64x64x16.F32.F16 R24, gdesc[UR8], R24",
                         "WARPGROUP.DEPBAR.LE gsb0, 0x0", "REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5",
                         "@P0 BRA 1", "EXIT"))
    c = cost.model(_launch(torch.float16, programs=100_000), f, (50,), shared=0, spills=8, nbytes=1 << 20, values=0)
    assert _flags(c) == {"division", "scalar-loads", "unpipelined-loads", "wgmma-wait-0", "atomics-in-loop", "spills"}
    # In float32 the same 16-bit loads are not one element each.
    assert "scalar-loads" not in _flags(cost.model(_launch(torch.float32, programs=100_000), f, (50,), 0, 0, 1, 0))
    # A loop whose registered trips say it never runs (a rare fallback) waits for nothing.
    assert "wgmma-wait-0" not in _flags(cost.model(_launch(torch.float16, programs=100_000), f, (0,), 0, 0, 1, 0))


def test_occupancy_by_registers_shared_memory_and_warps():
    assert cost.occupancy(registers=128, shared=0, warps=8) == 2
    assert cost.occupancy(registers=32, shared=0, warps=4) == 16
    assert cost.occupancy(registers=32, shared=100 * 1024, warps=4) == 2
    assert cost.occupancy(registers=255, shared=0, warps=4) == 2


def test_budget_check_fails_on_growth_over_ten_percent_and_on_missing_entries():
    budget = {"a": 10.0, "b": 10.0}
    assert cost.check_budget({"a": 10.9, "b": 5.0}, budget) == []
    problems = cost.check_budget({"a": 11.2, "b": 10.0, "c": 1.0}, budget)
    assert len(problems) == 2 and problems[0].startswith("a: predicted 11.20 us") and problems[1].startswith("c: no budget")


def test_budget_round_trips(tmp_path):
    path = tmp_path / "budget.json"
    cost.write_budget({"k [x]": 1.23456}, path)
    assert cost.read_budget(path) == {"k [x]": 1.235}


_QUICK = background("quick", "bench.cost", "--quick", "--dtype", "bfloat16")


@pytest.fixture(scope="module")
def quick() -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
    """One `python -m bench.cost --quick --dtype bfloat16`, in the background from the start of the session
    (conftest.background). Its sm_90 launches are also tests/test_static.py's, which it runs first."""
    proc, out = _QUICK.result()
    assert (out / "cost.csv").exists(), f"no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, pd.read_csv(out / "cost.csv")


def test_quick_predictions_stay_within_the_budget(quick):
    proc, df = quick
    problems = cost.check_budget(cost.predictions(df), cost.read_budget())
    assert not problems, "\n".join(problems) + "\n(a slower kernel, or --update-budget with the reason in the commit)"
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_quick_run_models_every_kernel_with_a_reference(quick):
    _, df = quick
    ours = df[~df["kernel"].isin(list(cost.REFERENCE_FAMILY))]
    library = [k for k in dispatch.kernels()
               if getattr(dispatch.spec(k).fn, "fn", dispatch.spec(k).fn).__module__.startswith("tritonconv.")]
    assert set(library) <= set(ours["kernel"]), f"not modelled: {sorted(set(library) - set(ours['kernel']))}"
    assert ours["predicted_us"].gt(0).all() and ours["reference_us"].gt(0).all()
    assert not ours["flags"].fillna("").str.contains("trips-mismatch").any(), \
        ours.loc[ours["flags"].fillna("").str.contains("trips-mismatch"), ["kernel", "loops", "flags"]]


def test_a_tensor_descriptor_is_specialised_and_its_tensor_counted():
    """A host tensor descriptor argument specialises as Triton's launcher does (triton 3.6 and 3.9), and
    the tensor it views counts among a launch's bytes although the PTX reads it through no ld.param."""
    w = torch.empty(64, 288, dtype=torch.float16)
    descriptor = TensorDescriptor(w, [64, 288], [288, 1], [64, 32])
    assert static._specialise(object(), descriptor) == ("tensordesc<fp16[64, 32]>", False)
    x = static.TensorArg((1000,), (1,), torch.float32, 1 << 20)
    launch = static.Launch("reference_copy", "toy", dispatch.Problem("reference_copy", 1000), dispatch.Config.of(),
                           True, "bench.reference_kernels:copy_kernel",
                           (("x_ptr", "*fp32"), ("n", "i32"), ("w_desc", "tensordesc<fp16[64, 32]>")), (), (), (), (1,),
                           (("x_ptr", x), ("n", 1000), ("w_desc", static.DescriptorArg(
                               static.TensorArg((64, 288), (288, 1), torch.float16, 1 << 24), (64, 288), (288, 1),
                               (64, 32)))))
    assert cost.touched_bytes(launch, "ld.param.u64 %rd1, [k_param_0];") == 4000 + 64 * 288 * 2
    assert cost.touched_bytes(launch, "") == 64 * 288 * 2


def _copy_launch(src_ptr: int, dst_ptr: int) -> static.Launch:
    """A recorded launch of the reference copy over one block of 4096 float32."""
    tensor = lambda ptr: static.TensorArg((4096,), (1,), torch.float32, ptr)  # noqa: E731
    return static.Launch("reference_copy", "toy", dispatch.Problem("reference_copy", 4096), dispatch.Config.of(),
                         True, "bench.reference_kernels:copy_kernel", (), (), (), (("num_warps", 4),), (1,),
                         (("src_ptr", tensor(src_ptr)), ("dst_ptr", tensor(dst_ptr)), ("numel", 4096), ("BLOCK", 4096)))


def test_replay_rebuilds_a_launch_from_its_record():
    """What --calibrate runs on a GPU, here in Triton's interpreter: the recorded copy, its source and
    destination given as two storages and as one (as a launch passing x twice would be)."""
    launch = _copy_launch
    call, tensors = cost.replay(launch(16, 32), device="cpu")
    assert tensors["src_ptr"] is not tensors["dst_ptr"] and tensors["src_ptr"].std() > 0
    call()
    assert torch.equal(tensors["dst_ptr"], tensors["src_ptr"])
    _, shared = cost.replay(launch(16, 16), device="cpu")
    assert shared["src_ptr"] is shared["dst_ptr"]


def test_calibration_writes_predicted_against_measured(tmp_path):
    df = pd.DataFrame([{"key": "copy", "kernel": "reference_copy", "dtype": "float32", "layout": "nchw",
                        "direction": "fwd", "probe": "toy", "bound": "hbm", "predicted_us": 2.0, "floor_us": 1.0}])
    path = tmp_path / "cost_calibration.csv"
    timed = cost.calibrate({"copy": _copy_launch(16, 32)}, df, path, device="cpu", timer=lambda call: (call(), 0.005)[1])
    assert path.exists() and list(pd.read_csv(path)["measured_us"]) == [5.0]
    assert timed.loc[0, "ratio"] == pytest.approx(2.5) and timed.loc[0, "error"] == ""
