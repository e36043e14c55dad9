"""Reading sm_90 SASS (cuobjdump --dump-sass) for the cost model: instructions, their kinds, and the loops.

A loop is a backward branch: a `BRA` to a lower (or equal) address closes the loop whose body starts at
the branch's target. Loops nest by address ranges. Each instruction belongs to the innermost loop whose
range holds it (its "own" loop); straight-line code outside every loop belongs to the top level.

Instructions are sorted into the kinds a reader of a kernel's cost asks about (`kind`): global loads by
width, LDGSTS (cp.async) and TMA loads, shared loads and stores, tensor-core instructions (HGMMA by
shape, HMMA), float and integer ALU work, MUFU, barriers and the waits of the two asynchronous pipelines
(cp.async groups: `DEPBAR.LE SB0, n`; wgmma groups: `WARPGROUP.DEPBAR.LE gsb0, n`, n being how many may
stay in flight), atomics, global stores by width and local (spill) memory. `Region.mix` counts them.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable

# One instruction line: /*0a30*/  [@!P0 ] OPCODE.MODS operands ;
_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P(?:[0-9]|T)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_HEX = re.compile(r"0x([0-9a-f]+)")

# Philox4x32's round multipliers (0xD2511F53, 0xCD9E8D57) as SASS writes immediates: signed 32-bit.
PHILOX_MULTIPLIER = "-0x2daee0ad"

INTEGER = frozenset({
    "IMAD", "IADD3", "IADD", "IADD32I", "LOP3", "LOP", "LOP32I", "SHF", "SHL", "SHR", "ISETP", "LEA", "IMNMX",
    "SEL", "IABS", "ISCADD", "IMUL", "POPC", "FLO", "BREV", "BMSK", "VIADD", "VIMNMX", "IDP", "PRMT", "IMUL32I",
    "ICMP", "UIADD3", "UIMAD", "ULOP3", "USHF", "UISETP", "ULEA", "USEL", "UPRMT", "UFLO", "UPOPC", "UBMSK",
    "USGXT", "SGXT", "PLOP3", "UPLOP3", "VIADDMNMX", "IMAD32I"})
FLOAT32 = frozenset({"FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FMUL32I", "FADD32I", "FSWZADD"})
HALF = frozenset({"HFMA2", "HADD2", "HMUL2", "HMNMX2", "HSETP2", "HSET2", "HFMA2MMA"})
CONVERT = frozenset({"F2F", "F2I", "I2F", "I2FP", "F2FP", "I2I", "F2IP", "FRND"})
MOVE = frozenset({"MOV", "UMOV", "S2R", "S2UR", "CS2R", "LDC", "ULDC", "R2UR", "SHFL", "VOTE", "VOTEU", "P2R", "R2P",
                  "MOV32I", "NOP", "LEPC", "MATCH", "REDUX", "UR2R"})


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One SASS instruction: its address, guard predicate ("" when none), opcode with modifiers, operands."""

    address: int
    predicate: str
    opcode: str
    operands: str

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])


def width(ins: Instruction) -> int:
    """Bits one thread moves with a global/shared load or store: .128, .64, .U16/.S16, .U8/.S8, else 32."""
    mods = ins.modifiers
    for token, bits in (("128", 128), ("64", 64), ("U16", 16), ("S16", 16), ("U8", 8), ("S8", 8)):
        if token in mods:
            return bits
    return 32


def wait_depth(ins: Instruction) -> int | None:
    """n of a pipeline wait `DEPBAR.LE SB0, n` / `WARPGROUP.DEPBAR.LE gsb0, n`: groups left in flight."""
    match = _HEX.search(ins.operands.split(",")[-1])
    return int(match.group(1), 16) if match else None


def kind(ins: Instruction) -> str:
    """The instruction's kind, one of the keys `Region.mix` counts (see the module docstring). Guarded by
    the always-false predicate (`@!PT`, ptxas's padding, e.g. `@!PT LDS RZ, [RZ]`) it is a "nop": it takes
    an issue slot and does nothing."""
    base = ins.base
    if ins.predicate == "@!PT":
        return "nop"
    if base == "LDG":
        return f"ldg.{width(ins)}"
    if base == "LDGSTS":
        return f"ldgsts.{width(ins)}"
    if base in ("UTMALDG", "UBLKCP", "UTMAPF"):
        return "tma"
    if base in ("LDS", "LDSM"):
        return "lds"
    if base in ("STS", "STSM"):
        return "sts"
    if base == "HGMMA":
        return f"hgmma.{ins.modifiers[0]}"
    if base in ("HMMA", "IMMA", "DMMA"):
        return "hmma"
    if base == "FFMA":
        return "ffma"
    if base in FLOAT32:
        return "fp32"
    if base in HALF:
        return "half2"
    if base in INTEGER:
        return "int"
    if base == "MUFU":
        return "mufu"
    if base in CONVERT:
        return "convert"
    if base == "WARPGROUP" and "DEPBAR" in ins.modifiers:
        return "wgmma_wait"
    if base == "DEPBAR":
        return "cp_async_wait"
    if base in ("BAR", "SYNCS", "MEMBAR", "WARPSYNC", "FENCE", "LDGDEPBAR", "WARPGROUP", "ERRBAR", "CCTL"):
        return "barrier"
    if base in ("ATOM", "ATOMG", "RED", "REDG", "ATOMS", "REDAS"):
        return "atomic"
    if base == "STG":
        return f"stg.{width(ins)}"
    if base in ("LDL", "STL"):
        return base.lower()
    if base in ("BRA", "EXIT", "CALL", "RET", "BSSY", "BSYNC", "BREAK", "JMP", "BRX", "YIELD", "WARPSYNC"):
        return "control"
    if base in MOVE:
        return "move"
    return "other"


def is_divide_start(ins: Instruction) -> bool:
    """Whether `ins` starts a runtime integer division: the divisor's reciprocal estimate (I2F ... .RP, then
    MUFU.RCP), what ptxas emits for `a // b` and `a % b` when b is not a compile-time constant."""
    return ins.base == "I2F" and "RP" in ins.modifiers


def is_philox_round(ins: Instruction) -> bool:
    """Whether `ins` is the high half of one Philox round's first multiply (one per round per call)."""
    return (ins.base == "IMAD" and ("HI" in ins.modifiers or "WIDE" in ins.modifiers)
            and PHILOX_MULTIPLIER in ins.operands.lower())


@dataclasses.dataclass
class Region:
    """Straight-line code of the kernel's top level or one loop's own body (nested loops excluded)."""

    index: int                   # 0: top level; loops are 1.. in preorder (outer first, then by address)
    head: int                    # first address (loops: the backward branch's target)
    tail: int                    # last address (loops: the backward branch)
    parent: int | None           # index of the enclosing region (None for the top level)
    depth: int                   # 0: top level; 1: outermost loops...
    instructions: list[Instruction] = dataclasses.field(default_factory=list)

    @property
    def mix(self) -> collections.Counter:
        return collections.Counter(kind(ins) for ins in self.instructions)

    @property
    def count(self) -> int:
        return len(self.instructions)


@dataclasses.dataclass
class Function:
    """A compiled kernel: resource usage and its code cut into regions (top level, then loops)."""

    name: str
    registers: int
    stack: int
    static_shared: int
    regions: list[Region]

    @property
    def loops(self) -> list[Region]:
        return self.regions[1:]

    def nest(self, index: int) -> list[Region]:
        """Loop `index` and every loop nested in it, outermost first."""
        out = [self.regions[index]]
        for r in self.regions[index + 1:]:
            if any(r.parent == o.index for o in out):
                out.append(r)
        return out


def instructions(text: str) -> list[Instruction]:
    """Every instruction of the first function in cuobjdump's SASS dump, in address order."""
    out: list[Instruction] = []
    for line in text.splitlines():
        if out and line.strip().startswith("Function :"):
            break
        match = _LINE.match(line)
        if match:
            address, predicate, opcode, operands = match.groups()
            out.append(Instruction(int(address, 16), (predicate or "").strip(), opcode, operands.strip()))
    return out


def _branch_target(ins: Instruction) -> int | None:
    match = _HEX.match(ins.operands.strip().lstrip("`("))
    return int(match.group(1), 16) if ins.base == "BRA" and match else None


def regions(code: list[Instruction]) -> list[Region]:
    """Cut the code into the top level and its loops. A backward BRA to its own address (the trap after
    the last EXIT) is not a loop, nor is any backward BRA after the last unconditional EXIT: code there is
    reached only by jumps, as an out-of-line slow path (a TMA load's mbarrier wait that retries, then
    branches back into the code that took it), which runs only when the wait is not yet over. Several
    backward branches to one target (a `continue`) make one loop."""
    exits = [ins.address for ins in code if ins.base == "EXIT" and not ins.predicate]
    end = max(exits) if exits else code[-1].address if code else 0
    spans: dict[int, int] = {}
    for ins in code:
        target = _branch_target(ins)
        if target is not None and target < ins.address <= end:
            spans[target] = max(spans.get(target, target), ins.address)
    # Preorder: by head, the longer of two loops with one head first (it encloses the other).
    ordered = sorted(spans.items(), key=lambda span: (span[0], -span[1]))
    top = Region(0, code[0].address if code else 0, code[-1].address if code else 0, None, 0)
    out = [top]
    for head, tail in ordered:
        parent = max((r for r in out if r.head <= head and tail <= r.tail), key=lambda r: r.depth)
        out.append(Region(len(out), head, tail, parent.index, parent.depth + 1))
    for ins in code:
        owner = max((r for r in out if r.head <= ins.address <= r.tail), key=lambda r: r.depth)
        owner.instructions.append(ins)
    return out


def parse(text: str) -> Function:
    """The first function of a `cuobjdump --dump-resource-usage --dump-sass` output."""
    name = re.search(r"Function\s*:?\s*([A-Za-z_]\w*)", text)
    resources = _RESOURCES.search(text)
    registers, stack, shared, _ = map(int, resources.groups()) if resources else (0, 0, 0, 0)
    return Function(name.group(1) if name else "", registers, stack, shared, regions(instructions(text)))


def count(code: Iterable[Instruction], predicate) -> int:
    return sum(1 for ins in code if predicate(ins))
