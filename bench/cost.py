"""A cost model on the CPU: predict every kernel launch's H200 time from its compiled sm_90 code.

    python -m bench.cost [--quick] [--kernel NAME ...] [--dtype float16 ...] [--also NAME=VALUE ...]
                         [--out DIR] [--dump DIR] [--jobs 2] [--update-budget] [--calibrate]

No kernel here has run on a GPU during development, so every speed change needs a number that the CPU can
produce, before and after. This module takes the launches bench.static records (every public op at real
layer shapes, heuristic configurations, every dtype and layout, forward and backward), compiles each for
sm_90 as bench.static does, reads its SASS (bench/sass.py) and predicts its time:

    issue   = busiest SM's warp-instructions / (4 per clock x 1.98 GHz)
    tensor  = busiest SM's tensor-core MACs / (the dtype's dense rate / 132 SMs)
    hbm     = the launch's fewest bytes / 4.3 TB/s
    latency = rounds x (exposed loads x 0.5 us + one program's own issue or tensor time)
    predicted = max(issue, tensor, hbm, latency); the largest names the bound ("latency" only when the
    waiting, not the program's own work, is most of that chain).

The first three are throughput limits. The fourth is the chain a program cannot overlap with itself:
every execution of a code region that loads global memory into registers and uses it in the same pass,
or drains the asynchronous-copy pipeline (`DEPBAR.LE SB0, 0x0`) and so refills it, waits one memory
round trip; the resident programs of an SM overlap theirs, so an SM needs ceil(its programs / resident
blocks) such chains in a row. A steady, pipelined loop (LDGSTS with waits that leave groups in flight)
exposes none.

A program's instructions and MACs are each code region's (bench/sass.py: the top level and each loop's own
body) counted once per execution: a loop runs per program as often as the trip counts its kernel
registers beside its heuristic say (`dispatch.register(..., trips)`: average iterations of each source
loop, outer loops first), times the loops around it. The busiest SM runs ceil(programs / 132) programs,
which is the last wave's tail. The fewest bytes are the tensors the compiled kernel reads at all (its PTX
loads their parameters), each counted once, X. The floor
is bench's roofline floor (bench.report.roofline_floor_ms) of those bytes and of the launch's useful
FLOPs, counted as bench.adapters counts them (only taps that read real input), at the constants below.

Reference rows, compiled and modelled the same way in the same run, say what the textbook code of the
same shape would do (bench/reference_kernels.py): a tiled GEMM of the same M, N, K for every
tensor-core launch, a copy of the same bytes for every other; `ratio_to_reference` = ours / theirs.

Flags name what a reader should fix; a loop is hot when its own body issues at least a fifth of the
program's instructions (without loops, the whole kernel is the hot code). See FLAGS.

Outputs: cost.csv (one row per launch and per reference) and cost.md under --out (bench/out/cost);
--dump DIR keeps each launch's SASS, PTX and a JSON of its kernel, config, problem, grid and arguments.
With --also NAME=VALUE (bench.static's option), each heuristic launch whose kernel's tuning space holds
the heuristic's configuration so changed is modelled with that candidate too, in a row of its own whose
key ends in the candidate's configuration (outside the budget).
bench/cost_budget.json holds each quick launch's predicted time; tests/test_cost.py fails when one grows
over 10% past it, and --update-budget rewrites it (say why in the commit). On a GPU, --calibrate also
times every launch with do_bench and writes cost_calibration.csv (predicted against measured).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import json
import math
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

import tritonconv
from tritonconv import dispatch, heuristics
from tritonconv._progress import progress
from tritonconv._shared import conv_geometry, geometry_args

from . import OUT, report, sass, static
from .adapters import live_pairs
from .reference_kernels import copy_kernel, matmul_kernel
from .timing import Ceilings


# ---------------------------------------------------------------------------------------------------------
# The machine.
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Machine:
    """What the model assumes of the H200 (measured on the GPU this project's runs use, see issue 12)."""

    sms: int = 132
    clock_hz: float = 1.98e9
    issue_per_clock: float = 4.0            # warp-instructions per SM per clock (4 schedulers)
    # Dense FLOP/s of large matmuls: torch.matmul bf16 8192^3 measured 769-798 TFLOP/s; TF32 half of it.
    # float32 without tensor cores: 128 FMA lanes per SM.
    matmul: tuple[tuple[str, float], ...] = (("float16", 790e12), ("bfloat16", 790e12), ("tf32", 395e12),
                                             ("float32", 132 * 128 * 2 * 1.98e9))
    hmma_share: float = 0.5                 # mma.sync (HMMA) rate on sm_90 as a share of wgmma's (assumed)
    hbm_bytes_per_s: float = 4.3e12         # device-to-device copy, reads plus writes
    memory_latency_s: float = 0.5e-6        # a global load's round trip under load (assumed; calibrate)
    registers_per_sm: int = 65536
    warps_per_sm: int = 64
    blocks_per_sm: int = 32
    shared_per_sm: int = 228 * 1024
    shared_reserved_per_block: int = 1024   # the driver's per-block reservation on sm_90

    @property
    def ceilings(self) -> Ceilings:
        """These constants as bench's roofline ceilings, for bench.report.roofline_floor_ms."""
        return Ceilings(self.hbm_bytes_per_s, dict(self.matmul), "cost model (H200 measured constants)")

    def mac_rate(self, operands: str) -> float:
        """Tensor-core MACs per second for operand type `operands` (SASS's F16, BF16, TF32; with "/hmma"
        for the mma.sync instructions, HMMA)."""
        rates = dict(self.matmul)
        kind, _, hmma = operands.partition("/")
        return (rates["tf32"] if kind == "TF32" else rates["float16"]) / 2 * (self.hmma_share if hmma else 1.0)


MACHINE = Machine()
HOT_SHARE = 0.2             # a loop is hot when its own body issues this share of a program's instructions
PHILOX_PER_VALUE = 0.25     # one Philox call gives four 32-bit words
PHILOX_SLACK = 1.2          # ... allowing for the masked lanes of partial tiles, which draw too
BUDGET_PATH = Path(__file__).resolve().parent / "cost_budget.json"
BUDGET_TOLERANCE = 1.10     # a prediction may grow 10% over its budget
DEFAULT_OUT = OUT / "cost"

# What each flag means (the markdown report prints this legend).
FLAGS = {
    "unpipelined-loads": "a hot loop loads global memory into registers (no LDGSTS/TMA): each iteration waits",
    "scalar-loads": "most global loads of the hot code move one element each; a contiguous tile takes vectors",
    "wgmma-wait-0": "a loop waits for every wgmma to finish each iteration (no MMA overlaps the next loads)",
    "division": "runtime integer division (I2F.RP + MUFU.RCP) in a hot loop",
    "pipeline-drain": "a loop drains the async-copy/wgmma pipeline each iteration around an inner pipelined loop",
    "philox": "more than one Philox call per four random values",
    "atomics-in-loop": "atomics in a hot loop",
    "spills": "registers spill to local memory",
    "under-two-waves": "fewer programs than two full waves of the GPU",
    "trips-mismatch": "the registered trip counts do not match the compiled loops; counts are rough",
}


# ---------------------------------------------------------------------------------------------------------
# Counting a launch.
# ---------------------------------------------------------------------------------------------------------

# The reference kernels' families; the families whose reference is a GEMM (the others' is a copy).
REFERENCE_FAMILY = {"reference_gemm": "implicit_gemm", "reference_copy": "copy"}
TENSOR_FAMILIES = frozenset({"implicit_gemm", "pointwise", "separable"})


def family(kernel: str) -> str:
    """The kernel family of a registered or reference kernel."""
    return REFERENCE_FAMILY.get(kernel) or dispatch.spec(kernel).family


def executions(function: sass.Function, trips: Sequence[float]) -> tuple[list[float], bool]:
    """How often each region runs per program, and whether `trips` matched the compiled loops.

    `trips` has one entry per source loop, outer loops first; a loop the compiler knew to run once (a
    bound specialised to the constant 1) leaves no loop in the SASS, so entries of 1 are dropped, outermost
    first, until the counts agree. Loops still unmatched count once."""
    loops = function.loops
    trips = [float(t) for t in trips]
    while len(trips) > len(loops) and 1.0 in trips:
        trips.remove(1.0)
    matched = len(trips) == len(loops)
    trips = (trips + [1.0] * len(loops))[:len(loops)]
    runs = [1.0]
    for loop in loops:
        runs.append(runs[loop.parent] * trips[loop.index - 1])
    return runs, matched


def used_parameters(ptx: str) -> set[int]:
    """Indices of the kernel parameters the PTX reads (`ld.param ... [name_param_i]`); an unread pointer
    (a placeholder for an absent bias, say) is a tensor the launch never touches."""
    return {int(i) for i in re.findall(r"ld\.param\.\w+\s+%\w+,\s*\[\w+_param_(\d+)\]", ptx)}


def touched_bytes(launch: static.Launch, ptx: str) -> int:
    """Bytes of the distinct tensors the kernel reads or writes, each counted once. A tensor descriptor
    counts as used (it is passed only to be loaded from); it expands to several PTX parameters (the TMA
    descriptor, its shape and strides), so parameters are matched to arguments only up to the first one."""
    runtime = [name for name, kind in launch.signature if kind != "constexpr"]
    descriptors = [name for name, kind in launch.signature if kind.startswith("tensordesc")]
    matched = runtime.index(descriptors[0]) if descriptors else len(runtime)
    used = {runtime[i] for i in used_parameters(ptx) if i < matched} | set(descriptors)
    tensors: dict[int, static.TensorArg] = {}
    for name, value in launch.values:
        value = value.base if isinstance(value, static.DescriptorArg) else value
        if name in used and isinstance(value, static.TensorArg):
            if value.data_ptr not in tensors or value.nbytes > tensors[value.data_ptr].nbytes:
                tensors[value.data_ptr] = value
    return sum(t.nbytes for t in tensors.values())


def random_values(launch: static.Launch) -> int:
    """Random values a launch of a dropout kernel needs at most: one per element of its largest tensor
    argument (an element for dropout, an input unit for max-pooling dropout, about a seed position for
    DropBlock, whose counting pass reads no tensor but is passed x)."""
    return max((v.nbytes // v.dtype.itemsize for _, v in launch.values if isinstance(v, static.TensorArg)),
               default=0)


def _kernel_size(values: Mapping[str, object]) -> tuple[int, int] | None:
    """(KH, KW) of a convolution-like launch: its KH/KW arguments, else its 4-D weight's last two dims."""
    if "KH" in values and "KW" in values:
        return values["KH"], values["KW"]
    for name in ("w_ptr", "wd_ptr", "dw_ptr"):
        weight = values.get(name)
        if isinstance(weight, static.TensorArg) and len(weight.shape) == 4:
            return weight.shape[2], weight.shape[3]
    return None


def useful_flops(launch: static.Launch) -> dict[str, float]:
    """The launch's FLOPs by unit ("tensor": tensor-core GEMM, "simt": float32 FMAs) as bench.adapters counts
    its op's: 2 per MAC of the Problem's GEMM terms, for convolutions only over (output pixel, tap) pairs
    that read real input (bench.adapters.live_pairs). Input gradients count the forward's MACs (their Problem
    tiles input pixels). Memory-bound kernels do no FLOPs that count."""
    p, values = launch.problem, dict(launch.values)
    kind = family(p.kernel)
    macs = float(p.m * p.n * p.k * p.batch)
    live = 1.0
    size = _kernel_size(values)
    if size is not None and "pad_h" in values:
        kh, kw = size
        pairs = (live_pairs(values["H"], kh, values["stride_h"], values["pad_h"], values["dil_h"])
                 * live_pairs(values["W"], kw, values["stride_w"], values["pad_w"], values["dil_w"]))
        live = pairs / (values["OH"] * values["OW"] * kh * kw)
        if p.kernel.endswith("input_grad"):
            live *= values["OH"] * values["OW"] / (values["H"] * values["W"]) * values.get("MULT", 1)
    if kind in ("implicit_gemm", "pointwise"):
        return {"tensor": 2 * macs * live}
    if kind == "depthwise":
        return {"simt": 2 * macs * live}
    if kind == "separable":
        return {"tensor": 2 * macs, "simt": 2 * p.m * p.k * dict(p.extra)["taps"] * live}
    return {}


def occupancy(registers: int, shared: int, warps: int, machine: Machine = MACHINE) -> int:
    """Blocks resident per SM, limited by registers (allocated per warp in units of 256), shared memory
    (plus the per-block reservation), warps and the block limit."""
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    limits = [machine.blocks_per_sm, machine.warps_per_sm // warps, machine.registers_per_sm // (per_warp * warps)]
    if shared:
        limits.append(machine.shared_per_sm // (shared + machine.shared_reserved_per_block))
    return max(0, min(limits))


def _mma_shape(ins: sass.Instruction) -> tuple[int, str]:
    """(MACs per warp-instruction, operand type) of an HGMMA (per warpgroup, so a quarter per warp) or
    HMMA (per warp)."""
    mods = ins.modifiers
    operands = mods[-1] if mods[-1] in ("F16", "BF16", "TF32", "E4M3", "E5M2") else "F16"
    if ins.base == "HGMMA":
        m, n, k = map(int, mods[0].split("x"))
        return m * n * k // 4, operands
    digits = mods[0]  # "16816": m16 n8 k16; "1688": m16 n8 k8
    return 16 * 8 * (16 if digits.endswith("16") else 8), operands


@dataclasses.dataclass
class Cost:
    """The model's numbers for one launch."""

    programs: int
    blocks_per_sm: int
    waves: float
    warp_instr: float            # per program
    exposed_loads: float         # memory round trips per program that nothing in the program overlaps
    macs: dict[str, float]       # tensor-core MACs per program by operand type (machine.mac_rate's keys)
    hot_loop_instr: int          # instructions per iteration of the loop that issues the most
    philox_per_value: float | None
    issue_us: float
    tensor_us: float
    hbm_us: float
    latency_us: float
    predicted_us: float
    bound: str
    flags: list[str]
    loops: str                   # one line per loop: trips and instructions per iteration


def model(launch: static.Launch, function: sass.Function, trips: Sequence[float], shared: int, spills: int,
          nbytes: int, values: int, machine: Machine = MACHINE) -> Cost:
    """Predict one launch (see the module docstring) and flag what slows it: `nbytes` are its fewest
    bytes, `values` the random values it needs (random_values)."""
    warps = dict(launch.options).get("num_warps", 4)
    programs = math.prod(launch.grid) if launch.grid else 1
    runs, matched = executions(function, trips)
    per_region = [r.count * runs[r.index] * warps for r in function.regions]
    warp_instr = sum(per_region)
    macs: dict[str, float] = collections.defaultdict(float)
    philox_rounds = 0.0
    for r in function.regions:
        for ins in r.instructions:
            if ins.base in ("HGMMA", "HMMA"):
                per_warp, operands = _mma_shape(ins)
                macs[operands if ins.base == "HGMMA" else f"{operands}/hmma"] += per_warp * warps * runs[r.index]
            elif sass.is_philox_round(ins):
                philox_rounds += runs[r.index] * warps * 32
    blocks = occupancy(function.registers, shared, warps, machine)
    per_sm = math.ceil(programs / machine.sms)
    program_issue = warp_instr / (machine.issue_per_clock * machine.clock_hz)
    program_tensor = sum(m / (machine.mac_rate(op) / machine.sms) for op, m in macs.items())
    exposed = sum(runs[r.index] for r in function.regions if waits_on_memory(r))
    rounds = math.ceil(per_sm / max(blocks, 1))
    waiting = rounds * exposed * machine.memory_latency_s
    work = rounds * max(program_issue, program_tensor)
    times = {"issue": per_sm * program_issue, "tensor": per_sm * program_tensor,
             "hbm": nbytes / machine.hbm_bytes_per_s, "latency": waiting + work}
    bound = max(times, key=times.get)
    if bound == "latency" and waiting < work:
        bound = "issue" if program_issue >= program_tensor else "tensor"
    hot = [r for r in function.loops if per_region[r.index] >= HOT_SHARE * warp_instr]
    hottest = max(function.loops, key=lambda r: per_region[r.index], default=None)
    waves = programs / (machine.sms * blocks) if blocks else math.inf
    cost = Cost(programs, blocks, waves, warp_instr, exposed, dict(macs), hottest.count if hottest else 0,
                philox_rounds / 10 * programs / values if philox_rounds and values else None,
                issue_us=times["issue"] * 1e6, tensor_us=times["tensor"] * 1e6, hbm_us=times["hbm"] * 1e6,
                latency_us=times["latency"] * 1e6, predicted_us=max(times.values()) * 1e6, bound=bound, flags=[],
                loops=_loops_line(function, runs))
    cost.flags = flags(function, runs, hot, launch, spills, waves, cost.philox_per_value or 0.0, matched)
    return cost


def waits_on_memory(region: sass.Region) -> bool:
    """Whether one execution of the region waits a memory round trip: it loads global memory into
    registers (LDG, used in the same pass) or drains the cp.async pipeline, which must then refill; the
    top level waits for its first loads of any kind."""
    kinds = [sass.kind(ins) for ins in region.instructions]
    drains = any(k == "cp_async_wait" and sass.wait_depth(ins) == 0 for k, ins in zip(kinds, region.instructions))
    loads = any(k.startswith("ldg.") for k in kinds)
    first = region.index == 0 and any(k.startswith(("ldg", "tma")) for k in kinds)
    return loads or drains or first


def _mix(region: sass.Region) -> str:
    """The region's instruction kinds with counts, pipeline waits with their depth (`wgmma_wait<=1`: at
    most one wgmma group left in flight), moves and branches left out."""
    kinds = collections.Counter(
        f"{k}<={sass.wait_depth(ins)}" if k.endswith("_wait") else k
        for k, ins in ((sass.kind(ins), ins) for ins in region.instructions) if k not in ("move", "control"))
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def _loops_line(function: sass.Function, runs: list[float]) -> str:
    """Each loop as 'L<i>[<L<parent>] x<runs per program>: <instructions per iteration> (<mix>)'."""
    return "; ".join(f"L{r.index}{f'<L{r.parent}' if r.parent else ''} x{runs[r.index]:.4g}: {r.count} ({_mix(r)})"
                     for r in function.loops)


def _loads(code: Iterable[sass.Instruction]) -> list[sass.Instruction]:
    return [ins for ins in code if ins.base == "LDG"]


def flags(function: sass.Function, runs: list[float], hot: list[sass.Region], launch: static.Launch, spills: int,
          waves: float, philox_per_value: float, matched: bool) -> list[str]:
    """The FLAGS that apply, each with a short note of what was seen."""
    out = []
    element_bits = 8 * launch.problem.dtype.itemsize
    nests = {r.index: function.nest(r.index) for r in function.loops}
    for r in hot:
        nest_code = [ins for loop in nests[r.index] for ins in loop.instructions]
        loads = _loads(r.instructions)
        if loads and not any(ins.base in ("LDGSTS", "UTMALDG", "UBLKCP") for ins in nest_code):
            out.append(f"unpipelined-loads: L{r.index} {len(loads)} LDG/iteration")
        divisions = sass.count(r.instructions, sass.is_divide_start)
        if divisions:
            out.append(f"division: L{r.index} {divisions} divisor(s)/iteration")
        atomics = sass.count(r.instructions, lambda ins: sass.kind(ins) == "atomic")
        if atomics:
            out.append(f"atomics-in-loop: L{r.index} {atomics}/iteration")
    hot_code = [ins for r in hot for ins in r.instructions] if hot else function.regions[0].instructions
    loads = _loads(hot_code)
    scalar = [ins for ins in loads if sass.width(ins) == element_bits]
    if len(scalar) >= 4 and 2 * len(scalar) >= len(loads):
        where = ", ".join(f"L{r.index}" for r in hot) if hot else "kernel"
        out.append(f"scalar-loads: {where} {len(scalar)} of {len(loads)} loads are {element_bits}-bit")
    for r in function.loops:
        waits = [sass.wait_depth(ins) for ins in r.instructions if sass.kind(ins) == "wgmma_wait"]
        # A loop the registered trips say never runs (a rare fallback) slows nothing.
        if runs[r.index] and any(sass.kind(ins).startswith("hgmma") for ins in r.instructions) and 0 in waits:
            out.append(f"wgmma-wait-0: L{r.index}")
        inner_async = any(sass.kind(ins).startswith(("ldgsts", "hgmma", "tma")) for loop in nests[r.index][1:]
                          for ins in loop.instructions)
        drains = [ins.opcode for ins in r.instructions
                  if sass.kind(ins) in ("wgmma_wait", "cp_async_wait") and sass.wait_depth(ins) == 0]
        if inner_async and drains and runs[r.index] >= 2:
            out.append(f"pipeline-drain: L{r.index} x{runs[r.index]:.3g}/program ({', '.join(sorted(set(drains)))})")
    if philox_per_value > PHILOX_PER_VALUE * PHILOX_SLACK:
        out.append(f"philox: {philox_per_value:.2f} calls/value")
    if spills:
        out.append(f"spills: {spills} B")
    if waves < 2:
        out.append(f"under-two-waves: {waves:.2f}")
    if not matched:
        out.append(f"trips-mismatch: {len(function.loops)} loops in SASS")
    return out


# ---------------------------------------------------------------------------------------------------------
# Reference launches (bench/reference_kernels.py), recorded as bench.static records ours.
# ---------------------------------------------------------------------------------------------------------

def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A tensor with a shape and no storage: references are compiled and modelled, never run here."""
    return torch.empty(shape, dtype=dtype, device="meta")


def gemm_reference(launch: static.Launch) -> tuple[static.Launch, tuple[float, ...], int]:
    """The tutorial matmul of the launch's GEMM terms (batch x [m, k] x [k, n]) in its dtype and dot
    precision, in the tutorial's H100 tiles: 128 x min(256, n) x 64 (16-bit) or 128 x min(128, n) x 32
    (float32). K is padded to 64 and every row to 64 elements, as a GEMM library's caller would, so that
    rows start 16-byte aligned and the K mask is constant over vectors. Returns the launch, its trip
    counts and its fewest bytes."""
    p = launch.problem
    p = dataclasses.replace(p, k=triton.cdiv(p.k, 64) * 64)
    sixteen = p.dtype != torch.float32
    block_n = heuristics.pow2_clamp(p.n, 16, 256 if sixteen else 128)
    block_k = 64 if sixteen else 32
    config = dispatch.Config.of(num_warps=8 if block_n >= 128 else 4, num_stages=3, BLOCK_M=128, BLOCK_N=block_n,
                                BLOCK_K=block_k, GROUP_M=8)
    # Rows padded to 64 elements, as a GEMM library's caller would, so that every row starts 16-byte aligned.
    pad = lambda size: triton.cdiv(size, 64) * 64  # noqa: E731
    a = _meta(p.batch, p.m, pad(p.k), dtype=p.dtype)[..., :p.k]
    b = _meta(p.batch, p.k, pad(p.n), dtype=p.dtype)[..., :p.n]
    c = _meta(p.batch, p.m, pad(p.n), dtype=p.dtype)[..., :p.n]
    problem = dispatch.Problem("reference_gemm", p.m, p.n, p.k, p.batch, p.dtype)
    grid = (triton.cdiv(p.m, 128) * triton.cdiv(p.n, block_n), p.batch)
    precision = dict(launch.values).get("DOT_PRECISION", "ieee")
    ref = static.record(matmul_kernel, "reference_gemm", launch.shape, problem, config, True,
                        (a, b, c, p.m, p.n, p.k, *a.stride(), *b.stride(), *c.stride()),
                        {"DOT_PRECISION": precision, **config.launch_kwargs()}, grid)
    nbytes = p.batch * (p.m * p.k + p.k * p.n + p.m * p.n) * p.dtype.itemsize
    return ref, (triton.cdiv(p.k, block_k),), nbytes


def copy_reference(launch: static.Launch, nbytes: int) -> tuple[static.Launch, tuple[float, ...], int]:
    """A copy of half of `nbytes` into the other half, 4096 elements of the launch's dtype per program
    (rounded up to whole programs, so that the mask is constant over vectors)."""
    dtype = launch.problem.dtype
    numel = triton.cdiv(max(1, nbytes // 2 // dtype.itemsize), 4096) * 4096
    config = dispatch.Config.of(num_warps=4, num_stages=1, BLOCK=4096)
    problem = dispatch.Problem("reference_copy", numel, dtype=dtype)
    ref = static.record(copy_kernel, "reference_copy", launch.shape, problem, config, True,
                        (_meta(numel, dtype=dtype), _meta(numel, dtype=dtype), numel), config.launch_kwargs(),
                        (triton.cdiv(numel, 4096),))
    return ref, (), 2 * numel * dtype.itemsize


# ---------------------------------------------------------------------------------------------------------
# The run: compile, model, report.
# ---------------------------------------------------------------------------------------------------------

COLUMNS = ["kernel", "family", "op", "probe", "dtype", "layout", "direction", "config", "grid", "programs",
           "num_warps", "regs", "smem_bytes", "spill_bytes", "blocks_per_sm", "waves", "loops", "hot_loop_instr",
           "warp_instr", "exposed_loads", "tensor_macs", "instr_per_kmac", "min_bytes", "instr_per_byte",
           "philox_per_value", "issue_us", "tensor_us", "hbm_us", "latency_us", "predicted_us", "floor_us", "predicted_pct_of_floor", "bound",
           "reference", "reference_us", "ratio_to_reference", "flags", "key", "error"]


def _op(shape: str) -> str:
    """The public op of the probe labelled `shape`."""
    return next((p.op for p in static.PROBES if p.shape == shape), "")


def _keys(launches: Sequence[static.Launch]) -> list[str]:
    """A stable name per launch: kernel, dtype, layout, direction and probe, numbered when repeated."""
    seen: collections.Counter = collections.Counter()
    keys = []
    for launch in launches:
        p = launch.problem
        key = (f"{launch.kernel} {str(p.dtype).removeprefix('torch.')} {'nhwc' if p.channels_last else 'nchw'} "
               f"{'bwd' if launch.backward else 'fwd'} [{launch.shape}]" + ("" if launch.heuristic else
                                                                            f" {{{launch.config}}}"))
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key} #{seen[key]}")
    return keys


def compile_all(launches: Sequence[static.Launch], jobs: int) -> dict[static.Launch, dict]:
    """bench.static's compile row (with "sass" and "ptx") of every launch, for sm_90, in `jobs` processes
    (Triton's on-disk cache makes a rerun fast)."""
    todo = static.jobs(list(launches), ["sm_90"])
    out: dict[static.Launch, dict] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=static._worker_init) as pool:
        futures = {pool.submit(static.compile_job, {k: v for k, v in job.items() if k != "launches"}, True): job
                   for job in todo.values()}
        for future in progress(as_completed(futures), "compiling", total=len(futures), unit="kernel"):
            for launch in futures[future]["launches"]:
                out[launch] = future.result()
    return out


def row(launch: static.Launch, compiled: dict, trips: Sequence[float], nbytes: int | None = None,
        machine: Machine = MACHINE) -> tuple[dict, str | None]:
    """One CSV row for a compiled launch (`nbytes`: its fewest bytes when known, else read off the PTX);
    also returns its SASS, for the dump."""
    p = launch.problem
    out = {"kernel": launch.kernel, "family": family(launch.kernel), "op": _op(launch.shape), "probe": launch.shape,
           "dtype": str(p.dtype).removeprefix("torch."), "layout": "nhwc" if p.channels_last else "nchw",
           "direction": "bwd" if launch.backward else "fwd", "config": str(launch.config),
           "grid": "x".join(map(str, launch.grid)), "num_warps": dict(launch.options).get("num_warps"),
           "regs": compiled.get("registers"), "smem_bytes": compiled.get("shared_bytes"), "error": compiled["error"]}
    if compiled["verdict"] == "no-compile":
        return out, None
    function = sass.parse(compiled["sass"])
    if nbytes is None:
        nbytes = touched_bytes(launch, compiled["ptx"])
    spills = (compiled["spill_store_bytes"] or 0) + (compiled["spill_load_bytes"] or 0) + (compiled["local_ops"] or 0)
    cost = model(launch, function, trips, compiled["shared_bytes"], spills, nbytes,
                 random_values(launch), machine)
    floor_ms, _ = report.roofline_floor_ms(useful_flops(launch), nbytes, machine.ceilings, p.dtype)
    programs = cost.programs
    total_instr = cost.warp_instr * programs
    tensor_macs = sum(cost.macs.values()) * programs
    out.update(programs=programs, spill_bytes=(compiled["spill_store_bytes"] or 0), blocks_per_sm=cost.blocks_per_sm,
               waves=round(cost.waves, 2), loops=cost.loops, hot_loop_instr=cost.hot_loop_instr,
               warp_instr=total_instr, exposed_loads=cost.exposed_loads, tensor_macs=tensor_macs,
               instr_per_kmac=total_instr / (tensor_macs / 1e3) if tensor_macs else None, min_bytes=nbytes,
               instr_per_byte=total_instr / nbytes if nbytes else None,
               philox_per_value=cost.philox_per_value,
               issue_us=cost.issue_us, tensor_us=cost.tensor_us, hbm_us=cost.hbm_us, latency_us=cost.latency_us,
               predicted_us=cost.predicted_us,
               floor_us=floor_ms * 1e3, predicted_pct_of_floor=report.percent_of_floor(floor_ms * 1e3, cost.predicted_us),
               bound=cost.bound, flags="; ".join(cost.flags))
    return out, compiled["sass"]


def model_launches(launches: Sequence[static.Launch], jobs: int,
                   dump: Path | None = None) -> tuple[pd.DataFrame, dict[str, static.Launch]]:
    """Compile and model every launch and its reference: one row each (references after ours), and the
    launches by the rows' keys."""
    keys = _keys(launches)
    compiled = compile_all(launches, jobs)
    rows, references = [], {}
    by_key = dict(zip(keys, launches))
    for key, launch in by_key.items():
        trips = dispatch.spec(launch.kernel).trips(launch.problem, launch.config, dict(launch.values))
        r, code = row(launch, compiled[launch], trips)
        r["key"] = key
        rows.append(r)
        if dump is not None and code is not None:
            _dump(dump, key, launch, code, compiled[launch]["ptx"], trips)
        if r.get("min_bytes") is not None:
            build = (gemm_reference(launch) if r["family"] in TENSOR_FAMILIES
                     else copy_reference(launch, r["min_bytes"]))
            references[key] = build
    # One compile and row per distinct reference.
    distinct = {}
    for key, (ref, trips, nbytes) in references.items():
        distinct.setdefault((ref.fn, ref.signature, ref.constexprs, ref.grid, ref.problem), (ref, trips, nbytes))
    ref_compiled = compile_all([ref for ref, _, _ in distinct.values()], jobs)
    ref_rows = {}
    for ident, (ref, trips, nbytes) in distinct.items():
        r, _ = row(ref, ref_compiled[ref], trips, nbytes)
        key = f"{ref.kernel} {r['dtype']} {r['grid']} [{ref.problem.m}x{ref.problem.n}x{ref.problem.k}x{ref.problem.batch}]"
        r["key"] = key if key not in by_key else f"{key} #{len(ref_rows) + 1}"
        ref_rows[ident] = r
        by_key[r["key"]] = ref
    for r in rows:
        if r["key"] in references:
            ref, _, _ = references[r["key"]]
            ref_row = ref_rows[(ref.fn, ref.signature, ref.constexprs, ref.grid, ref.problem)]
            r.update(reference=ref_row["key"], reference_us=ref_row.get("predicted_us"))
            if r.get("predicted_us") and ref_row.get("predicted_us"):
                r["ratio_to_reference"] = r["predicted_us"] / ref_row["predicted_us"]
    return pd.DataFrame(rows + list(ref_rows.values()), columns=COLUMNS), by_key


def _dump(folder: Path, key: str, launch: static.Launch, code: str, ptx: str, trips: Sequence[float]) -> None:
    """Keep a launch's SASS, PTX and a JSON of its kernel, config, problem, grid and arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")
    (folder / f"{stem}.sass").write_text(code)
    (folder / f"{stem}.ptx").write_text(ptx)

    def plain(v: object) -> object:
        if isinstance(v, static.TensorArg):
            return {"shape": v.shape, "stride": v.stride, "dtype": str(v.dtype)}
        return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)

    about = {"key": key, "kernel": launch.kernel, "fn": launch.fn, "config": launch.config.to_json(),
             "problem": {f.name: plain(getattr(launch.problem, f.name)) for f in dataclasses.fields(launch.problem)},
             "grid": launch.grid, "trips": list(trips), "signature": dict(launch.signature),
             "options": dict(launch.options), "arguments": {k: plain(v) for k, v in launch.values}}
    (folder / f"{stem}.json").write_text(json.dumps(about, indent=1, default=str))


def _fmt(digits: int):
    return lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _flag_names(flags: object) -> str:
    """'a: note; b: note' -> 'a, b'."""
    if not isinstance(flags, str) or not flags:
        return ""
    return ", ".join(dict.fromkeys(part.split(":")[0].strip() for part in flags.split(";")))


def kernel_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One line per kernel over its launches: predicted time, % of floor, bounds, ratio to reference, flags."""
    ours = df[~df["kernel"].isin(list(REFERENCE_FAMILY)) & df["predicted_us"].notna()]
    out = []
    for kernel, g in ours.groupby("kernel", sort=True):
        flags = ", ".join(dict.fromkeys(f for v in g["flags"] for f in _flag_names(v).split(", ") if f))
        out.append({"kernel": kernel, "family": g["family"].iloc[0], "launches": len(g),
                    "predicted us": f"{g['predicted_us'].min():.1f}-{g['predicted_us'].max():.1f}",
                    "% of floor": f"{g['predicted_pct_of_floor'].min():.0f}-{g['predicted_pct_of_floor'].max():.0f}",
                    "bound": "/".join(sorted(set(g["bound"]))),
                    "x reference": f"{g['ratio_to_reference'].median():.2f}", "flags": flags})
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame, quick: bool, machine: Machine = MACHINE) -> str:
    """The report: constants, the per-kernel summary, every launch, the flag legend."""
    ours = df[~df["kernel"].isin(list(REFERENCE_FAMILY))]
    parts = [f"# Cost model: predicted H200 times ({'quick' if quick else 'all'} probes, triton {triton.__version__})",
             "", "Predictions from the sm_90 SASS, not measurements. Constants: "
             f"{machine.sms} SMs at {machine.clock_hz / 1e9:.2f} GHz issuing {machine.issue_per_clock:g} "
             f"warp-instructions per clock each; dense tensor rates "
             + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in machine.matmul) + f" TFLOP/s; HBM "
             f"{machine.hbm_bytes_per_s / 1e12:.1f} TB/s. % of floor = bench's roofline floor / predicted time.",
             "", "## Per kernel", "", report.markdown_table(kernel_summary(df)), "", "## Per launch", ""]
    shown = ours.assign(flags=ours["flags"].map(_flag_names))[
        ["kernel", "dtype", "layout", "direction", "probe", "predicted_us", "floor_us", "predicted_pct_of_floor",
         "bound", "ratio_to_reference", "instr_per_kmac", "instr_per_byte", "flags", "error"]]
    parts += [report.markdown_table(shown.rename(columns={"predicted_pct_of_floor": "% of floor",
                                                          "ratio_to_reference": "x ref"}),
                                    {"predicted_us": _fmt(1), "floor_us": _fmt(1), "% of floor": _fmt(0),
                                     "x ref": _fmt(2), "instr_per_kmac": _fmt(2), "instr_per_byte": _fmt(3)}),
              "", "## Flags", ""]
    parts += [f"- `{name}`: {text}" for name, text in FLAGS.items()]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The fused separable convolution against our own unfused pair (issue 14: the fusion must pay).
# ---------------------------------------------------------------------------------------------------------

SEPARABLE_OP = "depthwise_separable_conv2d"
# Fused time / unfused time that issue 14 asks for: the forward at most 0.6x, the backward no slower.
SEPARABLE_TARGETS = {"fwd": 0.6, "bwd": 1.0}


def unfused_separable(training: bool) -> Callable:
    """An op with depthwise_separable_conv2d's signature that runs our depthwise op (the activation in
    its epilogue) then our pointwise op, as a model without the fused kernel would. `training`: the
    depthwise op keeps its pre-activation for the backward, as the public ops do when a gradient is
    needed; otherwise the backward stops at the pointwise op (only the forward is compared)."""
    def op(input, depthwise_weight, pointwise_weight, depthwise_bias=None, pointwise_bias=None, stride=1,
           padding=0, dilation=1, activation=None):
        geo = conv_geometry(input, depthwise_weight, depthwise_bias, stride, padding, dilation, input.shape[1])
        act = activation or "none"
        t, _ = torch.ops.tritonconv.depthwise_conv2d(input, depthwise_weight, depthwise_bias, *geometry_args(geo),
                                                     act, training and act != "none")
        return tritonconv.pointwise_conv2d(t if training else t.detach(), pointwise_weight, pointwise_bias)
    return op


def inference(op: Callable) -> Callable:
    """`op` run without autograd (a forward that keeps nothing for a backward), its output then marked as
    needing a gradient so that a probe's backward runs (and launches nothing)."""
    def run(*args, **kwargs):
        with torch.no_grad():
            y = op(*args, **kwargs)
        return y.requires_grad_()
    return run


def separable_comparison(dtypes: Sequence[str], jobs: int) -> pd.DataFrame:
    """Per separable probe, dtype and direction: the fused op's predicted time (every launch of that
    direction summed) beside our depthwise op then pointwise op at the same shape, and their ratio.
    Forwards are compared in inference (neither side stores anything for a backward: a training forward
    of the fused op also writes the intermediate, which the unfused inference pair reads back, so
    comparing the two would count that write against the fusion), backwards as the training pairs run them."""
    runs = {"fused": (tritonconv.depthwise_separable_conv2d, ("bwd",)),
            "fused inference": (inference(tritonconv.depthwise_separable_conv2d), ("fwd",)),
            "unfused": (unfused_separable(False), ("fwd",)), "unfused training": (unfused_separable(True), ("bwd",))}
    tagged: list[tuple[str, str, str, static.Launch]] = []  # (probe, dtype, run, launch)
    with static._gpu_world(False) as recorder:
        for p in static.PROBES:
            if p.op != SEPARABLE_OP:
                continue
            for dtype in dtypes:
                for name, (op, _) in runs.items():
                    recorder.start(p.shape)
                    first = len(recorder.launches)
                    p.run(op, static.DTYPES[dtype])
                    tagged += [(p.shape, dtype, name, launch) for launch in recorder.launches[first:]]
    compiled = compile_all(list(dict.fromkeys(launch for *_, launch in tagged)), jobs)
    predicted: dict[static.Launch, float] = {}
    for *_, launch in tagged:
        if launch not in predicted:
            trips = dispatch.spec(launch.kernel).trips(launch.problem, launch.config, dict(launch.values))
            predicted[launch] = row(launch, compiled[launch], trips)[0].get("predicted_us", math.nan)
    sums: dict[tuple, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for shape, dtype, name, launch in tagged:
        direction = "bwd" if launch.backward else "fwd"
        if direction not in runs[name][1]:
            continue
        part = "fused" if name.startswith("fused") else ("depthwise" if family(launch.kernel) == "depthwise" else "pointwise")
        sums[shape, dtype, direction][part] += predicted[launch]
    out = []
    for (shape, dtype, direction), parts in sums.items():
        unfused = parts["depthwise"] + parts["pointwise"]
        out.append({"probe": shape, "dtype": dtype, "direction": direction, "fused_us": parts["fused"],
                    "depthwise_us": parts["depthwise"], "pointwise_us": parts["pointwise"], "unfused_us": unfused,
                    "fused / unfused": parts["fused"] / unfused, "target": SEPARABLE_TARGETS[direction]})
    return pd.DataFrame(out)


def separable_markdown(comparison: pd.DataFrame) -> str:
    """The comparison's section of cost.md."""
    return "\n".join([
        "## Fused separable against our depthwise then pointwise", "",
        "Predicted microseconds of every launch of the fused op in that direction, beside our depthwise op "
        "(activation in its epilogue) followed by our pointwise op at the same shape; pointwise_us counts every "
        "launch of the unfused pair that is not a depthwise kernel (1x1 GEMMs, activation backward, bias sums). "
        "Forwards run in inference on both sides (nothing kept for a backward), backwards as training runs them. "
        "Issue 14's target: fused / unfused at most the target column.", "",
        report.markdown_table(comparison, {c: _fmt(1) for c in ("fused_us", "depthwise_us", "pointwise_us",
                                                                "unfused_us")}
                              | {"fused / unfused": _fmt(2), "target": _fmt(1)}), ""])


# ---------------------------------------------------------------------------------------------------------
# The budget.
# ---------------------------------------------------------------------------------------------------------

def predictions(df: pd.DataFrame) -> dict[str, float]:
    """Predicted microseconds of our launches (not the references), by key."""
    ours = df[~df["kernel"].isin(list(REFERENCE_FAMILY)) & df["predicted_us"].notna()]
    return {k: float(v) for k, v in zip(ours["key"], ours["predicted_us"])}


def read_budget(path: Path = BUDGET_PATH) -> dict[str, float]:
    return json.loads(path.read_text())["budget_us"] if path.exists() else {}


def write_budget(predicted: Mapping[str, float], path: Path = BUDGET_PATH) -> None:
    about = ("Predicted H200 microseconds of every quick probe launch (python -m bench.cost --quick). "
             "tests/test_cost.py fails when a prediction grows more than 10% over its entry; rewrite with "
             "--update-budget and say why in the commit.")
    entries = ",\n".join(f"  {json.dumps(k)}: {v:.3f}" for k, v in sorted(predicted.items()))
    path.write_text(f'{{"about": {json.dumps(about)},\n "triton": "{triton.__version__}",\n "budget_us": {{\n'
                    f"{entries}\n}}}}\n")


def check_budget(predicted: Mapping[str, float], budget: Mapping[str, float],
                 tolerance: float = BUDGET_TOLERANCE) -> list[str]:
    """One line per launch over its budget by more than `tolerance`, or without a budget."""
    problems = []
    for key, us in sorted(predicted.items()):
        if key not in budget:
            problems.append(f"{key}: no budget entry (python -m bench.cost --quick --update-budget)")
        elif us > budget[key] * tolerance:
            problems.append(f"{key}: predicted {us:.2f} us, over its budget {budget[key]:.2f} us by "
                            f"{100 * (us / budget[key] - 1):.0f}%")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Calibration on a GPU.
# ---------------------------------------------------------------------------------------------------------

def replay(launch: static.Launch, device: str = "cuda") -> tuple[Callable[[], object], dict[str, torch.Tensor]]:
    """A call that runs the recorded launch again on `device`, and its tensors by argument name: random
    inputs of the recorded shapes and strides (zeros for integer tensors), one tensor per recorded
    storage, so that a tensor passed twice is shared as it was (a tensor descriptor's too)."""
    module, name = launch.fn.split(":")
    fn = getattr(importlib.import_module(module), name)
    storages: dict[int, torch.Tensor] = {}

    def tensor(value: static.TensorArg) -> torch.Tensor:
        # References record shapeless (meta) tensors, all at address 0: each gets its own.
        if value.data_ptr not in storages or value.data_ptr == 0:
            t = torch.empty_strided(value.shape, value.stride, dtype=value.dtype, device=device)
            t.normal_() if value.dtype.is_floating_point else t.zero_()
            storages[value.data_ptr] = t
        return storages[value.data_ptr]

    kwargs: dict[str, object] = {}
    for arg, value in launch.values:
        if isinstance(value, static.TensorArg):
            kwargs[arg] = tensor(value)
        elif isinstance(value, static.DescriptorArg):
            kwargs[arg] = TensorDescriptor(tensor(value.base), list(value.shape), list(value.strides),
                                           list(value.block_shape))
        else:
            kwargs[arg] = value
    tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    return (lambda: fn[launch.grid](**kwargs, **dict(launch.options))), tensors


def _do_bench(call: Callable[[], object]) -> float:
    """Median milliseconds of `call`, L2 flushed before each run (a layer's inputs come from HBM)."""
    return triton.testing.do_bench(call, warmup=10, rep=40, return_mode="median")


def calibrate(launches: Mapping[str, static.Launch], df: pd.DataFrame, path: Path, deadline: float = math.inf,
              device: str = "cuda", timer: Callable[[Callable[[], object]], float] = _do_bench) -> pd.DataFrame:
    """Time each launch (by key) on `device`, writing `path` as it goes (predicted and measured us, the
    ratio measured / predicted); starts no launch after time.monotonic() passes `deadline`."""
    by_key = df.set_index("key")
    rows = []
    for key, launch in launches.items():
        if time.monotonic() > deadline:
            print(f"calibration: stopped at its deadline after {len(rows)} of {len(launches)} launches")
            break
        if key not in by_key.index or pd.isna(by_key.at[key, "predicted_us"]):
            continue
        r = by_key.loc[key]
        try:
            call, _ = replay(launch, device)
            measured, error = timer(call) * 1e3, ""
        except Exception as e:  # noqa: BLE001 (one failing launch is a row, not the end)
            measured, error = math.nan, f"{type(e).__name__}: {e}"[:200]
        rows.append({"key": key, "kernel": r["kernel"], "dtype": r["dtype"], "layout": r["layout"],
                     "direction": r["direction"], "probe": r["probe"], "bound": r["bound"],
                     "predicted_us": r["predicted_us"], "measured_us": measured,
                     "ratio": measured / r["predicted_us"], "floor_us": r["floor_us"], "error": error})
        pd.DataFrame(rows).to_csv(path, index=False)
    out = pd.DataFrame(rows)
    if len(out):
        ok = out[out["ratio"].notna() & (out["ratio"] > 0)]
        by_bound = ok.groupby("bound")["ratio"].median()
        error = math.exp(ok["ratio"].map(lambda v: abs(math.log(v))).median()) if len(ok) else math.nan
        print(f"calibration: {len(ok)} launches timed; median |error| x{error:.2f}; measured/predicted by bound: "
              + ", ".join(f"{b} {v:.2f}" for b, v in by_bound.items()))
    return out


# ---------------------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="each (kernel, dtype, layout) at the first probe shape that launches it (the budget's set)")
    parser.add_argument("--kernel", nargs="+", metavar="NAME", help="only these registered kernels")
    parser.add_argument("--dtype", nargs="+", choices=list(static.DTYPES), default=list(static.DTYPES))
    static.add_also(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for cost.csv and cost.md")
    parser.add_argument("--dump", type=Path, metavar="DIR", help="keep each launch's SASS, PTX and JSON here")
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes")
    parser.add_argument("--update-budget", action="store_true", help=f"with --quick: rewrite {BUDGET_PATH.name}")
    parser.add_argument("--calibrate", type=Path, metavar="CSV",
                        help="on a GPU: also time every launch with do_bench and write predicted vs measured here")
    parser.add_argument("--calibrate-seconds", type=float, default=math.inf,
                        help="start no calibration launch this many seconds after the command started")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.calibrate_seconds
    if args.update_budget and not (args.quick and not args.kernel and args.dtype == list(static.DTYPES)
                                   and not args.also):
        parser.error("--update-budget needs --quick over every kernel and dtype (the budget's set), without --also")
    kernels, launches, errors = static.select(parser, args.kernel, args.dtype, False, args.quick, dict(args.also))
    missing = sorted(set(kernels) - {launch.kernel for launch in launches})
    errors += [f"no probe launches kernel {k!r}" for k in missing]
    df, by_key = model_launches(launches, args.jobs, args.dump)
    df = df.sort_values(["kernel", "dtype", "layout", "direction", "probe"], kind="stable")
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "cost.csv", index=False)
    # The fused separable kernel's section: whenever it is among the kernels modelled.
    comparison = (separable_markdown(separable_comparison(args.dtype, args.jobs))
                  if "separable_forward" in kernels else "")
    (args.out / "cost.md").write_text(markdown(df, args.quick) + ("\n" + comparison if comparison else ""))
    print(f"wrote {args.out / 'cost.csv'} and {args.out / 'cost.md'}: {len(df)} rows")
    print(report.markdown_table(kernel_summary(df)))
    print(comparison, end="")
    errors += [f"{k}: {e}" for k, e in zip(df["key"], df["error"]) if isinstance(e, str) and e]
    problems = []
    if args.quick:
        predicted = {k: us for k, us in predictions(df).items() if by_key[k].heuristic}
        if args.update_budget:
            write_budget(predicted)
            print(f"wrote {BUDGET_PATH}")
        else:
            budget = read_budget()
            problems = check_budget(predicted, budget)
            for line in problems:
                print("budget:", line, file=sys.stderr)
    if args.calibrate is not None:
        calibrate(by_key, df, args.calibrate, deadline)
    for error in errors:
        print("error:", error, file=sys.stderr)
    return 1 if errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
