"""Mutation check: one-token changes to the kernels (and the host code that sizes their launches), each
run against the tests, to find what the suite cannot tell apart.

    python -m bench.mutate                                # the named mutants below
    python -m bench.mutate --named 0 1 2                  # issue 18's three survivors
    python -m bench.mutate --enumerate kernels/conv.py    # every H<->W swap and comparison flip in a file
    python -m bench.mutate --tests tests/test_geometry.py # against these tests only

Each mutant is applied to a copy of the package in a temporary folder (the work tree is never touched);
the tests run there with `pytest -x` in Triton's interpreter, so a mutant dies at its first failing
test, and a surviving one costs the whole selection. By default the selection is tests/test_geometry.py
and the test file of the mutated op first, then the rest of the suite (static checks and the benchmark's
tests excepted: they compile or time, they do not check values). Not a pytest module: it runs the suite.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Pairs of names whose swap turns an H quantity into its W twin (or back).
SWAPS = [("dil_h", "dil_w"), ("stride_h", "stride_w"), ("pad_h", "pad_w"), ("sxh", "sxw"), ("syh", "syw"),
         ("swh", "sww"), ("swdh", "swdw"), ("sdyh", "sdyw"), ("sdxh", "sdxw"), ("sih", "siw"), ("H", "W"),
         ("OH", "OW"), ("KH", "KW"), ("kh", "kw"), ("ih", "iw"), ("oh", "ow"), ("ih0", "iw0"), ("th", "tw"),
         ("BLOCK_H", "BLOCK_W"), ("SPAN_H", "SPAN_W"), ("kh_start", "kw_start"), ("kh_end", "kw_end")]
FLIPS = {">=": ">", ">": ">=", "<=": "<", "<": "<="}
# Test files that never check a kernel's values.
NOT_CHECKS = {"test_static.py", "test_bench.py"}


@dataclass(frozen=True)
class Mutant:
    """Replace the `index`-th occurrence of the token `old` with `new` on the one line of `path` that
    contains `line`."""

    path: str
    line: str
    old: str
    new: str
    index: int = 0

    def __str__(self) -> str:
        where = f" (#{self.index})" if self.index else ""
        return f"{self.path}: `{self.line.strip()}`: {self.old} -> {self.new}{where}"

    def apply(self, text: str) -> str:
        lines = text.splitlines(keepends=True)
        hits = [i for i, ln in enumerate(lines) if self.line in ln]
        if len(hits) != 1:
            raise ValueError(f"{self}: the line pattern matches {len(hits)} lines, not one")
        ln = lines[hits[0]]
        pattern = rf"(?<![\w]){re.escape(self.old)}(?![\w])" if self.old.isidentifier() \
            else rf"(?<![<>=!]){re.escape(self.old)}(?![<>=])"
        spans = [m.span() for m in re.finditer(pattern, ln)]
        if self.index >= len(spans):
            raise ValueError(f"{self}: token {self.old!r} occurs {len(spans)} times on the line")
        a, b = spans[self.index]
        lines[hits[0]] = ln[:a] + self.new + ln[b:]
        return "".join(lines)


# The three mutants issue 18 found the suite missing, and the ones it caught, as a yardstick.
NAMED = [
    Mutant("kernels/conv.py", "iw = iw0 + kw * dil_w", "dil_w", "dil_h"),                    # forward input column
    Mutant("kernels/conv.py", "iw = ow * stride_w - pad_w + kw * dil_w", "dil_w", "dil_h"),  # weight gradient
    Mutant("tritonconv/pooling.py", "if ceil_mode and (o - 1) * s >= size + p", ">=", ">"),   # ceil_mode boundary
    Mutant("kernels/conv.py", "tw = iw + pad_w - kw * dil_w", "dil_w", "dil_h"),             # input gradient
    Mutant("kernels/depthwise.py", "iw = iw0 + kw * dil_w", "dil_w", "dil_h"),
    Mutant("kernels/depthwise.py", "iw = ow * stride_w - pad_w + kw * dil_w", "dil_w", "dil_h"),
    Mutant("kernels/depthwise.py", "tw = rw + pad_w - kw * dil_w", "dil_w", "dil_h"),
    Mutant("kernels/pooling.py", "tw = iw + pad_w - (t % KW) * dil_w", "dil_w", "dil_h"),
    Mutant("kernels/pointwise.py", "+ ((pix % OW) * stride_w).to(tl.int64) * sxw", "stride_w", "stride_h"),
]


def enumerate_mutants(path: str) -> list[Mutant]:
    """Every single-token H<->W swap (SWAPS) and comparison flip (FLIPS) in the code of `path`, comments
    and strings excluded, on lines that identify themselves uniquely."""
    text = (ROOT / path).read_text()
    lines = text.splitlines()
    partner = {a: b for pair in SWAPS for a, b in (pair, pair[::-1])}
    seen: dict[tuple[int, str], int] = {}
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        new = partner.get(tok.string) if tok.type == tokenize.NAME else FLIPS.get(tok.string) \
            if tok.type == tokenize.OP else None
        if new is None:
            continue
        row = tok.start[0] - 1
        index = seen.get((row, tok.string), 0)
        seen[(row, tok.string)] = index + 1
        line = lines[row].strip()
        if sum(line in ln for ln in lines) == 1:
            out.append(Mutant(path, line, tok.string, new, index))
    return out


def _default_tests(mutant: Mutant) -> list[str]:
    own = f"tests/test_{Path(mutant.path).stem}.py"
    first = ["tests/test_geometry.py"] + ([own] if (ROOT / own).exists() else [])
    rest = sorted(f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
                  if f"tests/{p.name}" not in first and p.name not in NOT_CHECKS)
    return first + rest


def _copy_tree(dest: Path) -> None:
    """The package as Python imports it (kernels/ inside tritonconv/, as the wheel ships it) and the tests."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tritonconv", dest / "tritonconv", ignore=ignore)
    shutil.copytree(ROOT / "kernels", dest / "tritonconv" / "kernels", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _in_copy(path: str) -> str:
    return path.replace("kernels/", "tritonconv/kernels/", 1) if path.startswith("kernels/") else path


def _pytest(dest: Path, tests: list[str], timeout: float) -> tuple[bool, str, float]:
    """(passed, the first failing test or '', seconds) of `pytest -x` on `tests` in the copy."""
    env = {**os.environ, "PYTHONPATH": str(dest), "TRITON_INTERPRET": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                             cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
    return run.returncode == 0, failed[0] if failed else run.stdout.strip().splitlines()[-1:][0] \
        if run.returncode else "", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--enumerate", nargs="+", metavar="FILE", help="every swap/flip mutant of these files")
    parser.add_argument("--named", nargs="+", type=int, metavar="I", help="only these of the named mutants (0-based)")
    parser.add_argument("--tests", nargs="+", help="test files to run (default: see the module docstring)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per mutant")
    args = parser.parse_args(argv)
    mutants = [m for f in args.enumerate for m in enumerate_mutants(f)] if args.enumerate \
        else [NAMED[i] for i in args.named] if args.named else NAMED

    with tempfile.TemporaryDirectory(prefix="tritonconv-mutate-") as tmp:
        dest = Path(tmp)
        _copy_tree(dest)
        where = subprocess.run([sys.executable, "-c", "import tritonconv.kernels.conv as m; print(m.__file__)"],
                               cwd=dest, env={**os.environ, "PYTHONPATH": tmp}, capture_output=True, text=True)
        if not where.stdout.startswith(tmp):
            raise SystemExit(f"the copy is not what Python imports ({where.stdout or where.stderr}); aborting")
        survivors = 0
        print(f"{len(mutants)} mutants")
        for mutant in mutants:
            target = dest / _in_copy(mutant.path)
            original = target.read_text()
            target.write_text(mutant.apply(original))
            try:
                passed, first_failure, seconds = _pytest(dest, args.tests or _default_tests(mutant), args.timeout)
            finally:
                target.write_text(original)
            survivors += passed
            verdict = "SURVIVED" if passed else f"killed by {first_failure}"
            print(f"{verdict:<90} {seconds:6.0f} s  {mutant}", flush=True)
        print(f"{survivors} of {len(mutants)} survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
