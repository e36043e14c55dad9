"""Test harness: Triton's interpreter when there is no GPU, NaN-filled outputs, one tolerance table, and
the background runs of the static reports."""

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch

if not torch.cuda.is_available():
    # Must happen before anything imports triton.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import tritonconv as tc  # noqa: E402
from tritonconv import testing  # noqa: E402

# Every torch.empty (so every output our launchers allocate) starts as NaN: an element a kernel forgets
# to write shows up as NaN instead of passing by luck. warn_only keeps torch ops without a deterministic
# implementation usable in references.
torch.use_deterministic_algorithms(True, warn_only=True)
assert torch.utils.deterministic.fill_uninitialized_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> float:
    """The tolerance table (tritonconv.testing.tolerance) on the test device."""
    return testing.tolerance(dtype, DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Compare a result with a float64 reference: no NaN, error within tolerance(dtype)."""
    problem = testing.mismatch(actual.cpu(), expected.double().cpu(), tolerance(dtype), what)
    assert problem is None, problem


def rand(*shape: int, dtype: torch.dtype = torch.float32, channels_last: bool = False,
         requires_grad: bool = False) -> torch.Tensor:
    """Random normal test data on the test device, optionally channels_last."""
    t = torch.randn(*shape, dtype=torch.float64).to(DEVICE, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


# The 16-bit (dtype, channels_last) pairs that `dtype_layouts` rotates through.
_SIXTEEN_BIT = [(torch.float16, False), (torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, True)]


def dtype_layouts(i: int) -> list[tuple[torch.dtype, bool]]:
    """The (dtype, channels_last) pairs a parametrised test runs its i-th case in: float32 in both layouts,
    and one 16-bit pair, rotating with i through float16 and bfloat16 in both layouts. A deterministic
    subsample (the suite must fit CI's time): each 16-bit type still meets each layout across the cases,
    and the 16-bit types differ from each other in conversions only (the same tiles, by element size)."""
    return [(torch.float32, False), (torch.float32, True), _SIXTEEN_BIT[i % len(_SIXTEEN_BIT)]]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms(enabled) inside the block (the tests run with it on, warn_only,
    which sends split-K reductions through their workspace), restored after it."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=True)


# One tiny call per public op, forward and backward, registered by the op's own test file with `op_sample`.
# tests/test_library.py opchecks every tritonconv:: op they reach and tests/test_dispatch.py checks the
# heuristics of every kernel they launch, so a new op adds its sample beside its tests and nowhere else.
_OP_SAMPLES: dict[str, Callable[[], torch.Tensor]] = {}


def op_sample(name: str) -> Callable:
    """Decorator: register `fn() -> output` as op `name`'s sample (its inputs requiring grad)."""
    def register(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        _OP_SAMPLES[name] = fn
        return fn
    return register


def op_samples() -> dict[str, Callable[[], torch.Tensor]]:
    """Every op's sample: imports every test module (they register them), whichever were collected. A
    module that skips itself on import (a missing optional package) registers none, and must not skip
    the caller."""
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        try:
            importlib.import_module(path.stem)
        except pytest.skip.Exception:
            continue
    return dict(_OP_SAMPLES)


def run_samples() -> None:
    """Run every op's sample, forward and backward."""
    for sample in op_samples().values():
        sample().float().sum().backward()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------
# Background reports. tests/test_cost.py and tests/test_static.py check reports that compile every kernel
# for real GPUs on the CPU (`python -m bench.cost`, `python -m bench.static`): minutes of compiler work
# that does not touch the interpreter. Each test module declares its command with `background`; once
# collection has found a test that uses the command's fixture, the commands run one after another in a
# single compiler process beside the interpreter tests (CI has two cores; the interpreter uses one), and
# the fixture waits for its own. bench.cost runs first: its sm_90 launches are also bench.static's, found
# again in Triton's cache.
# ---------------------------------------------------------------------------------------------------------

class Background:
    """One command's run: `result()` waits for it and returns (CompletedProcess, output folder)."""

    def __init__(self, fixture: str, args: list[str]):
        self.fixture, self.args = fixture, args
        self.out = Path(tempfile.mkdtemp(prefix=f"tritonconv-{fixture}-"))
        self.done = threading.Event()
        self.scheduled = False
        self.proc: subprocess.Popen | None = None
        self.completed: subprocess.CompletedProcess | None = None

    def run(self) -> None:
        # Compiling needs real Triton, not the interpreter this process runs.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        command = [sys.executable, "-m", *self.args, "--jobs", "1", "--out", str(self.out)]
        try:
            self.proc = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdout, stderr = self.proc.communicate(timeout=1200)
            self.completed = subprocess.CompletedProcess(command, self.proc.returncode, stdout, stderr)
        except Exception as error:  # reported by result(), in the test that needs it
            self.completed = subprocess.CompletedProcess(command, -1, "", f"{type(error).__name__}: {error}")
            if self.proc is not None:
                self.proc.kill()
        finally:
            self.done.set()

    def result(self) -> tuple[subprocess.CompletedProcess, Path]:
        if not self.scheduled:  # no collected test asked for it (a fixture used another way): run it now
            self.scheduled = True
            self.run()
        self.done.wait()
        return self.completed, self.out


_BACKGROUND: list[Background] = []


def background(fixture: str, *args: str) -> Background:
    """Declare `python -m *args --jobs 1 --out DIR`, the report behind the fixture named `fixture`, to run
    in the background (see above)."""
    job = Background(fixture, list(args))
    _BACKGROUND.append(job)
    return job


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    jobs = [job for job in _BACKGROUND if job.fixture in wanted]
    for job in jobs:
        job.scheduled = True
    if jobs:
        threading.Thread(target=lambda: [job.run() for job in jobs], daemon=True).start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for job in _BACKGROUND:  # a run cut short (-x, ^C) leaves no compiler behind
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
        shutil.rmtree(job.out, ignore_errors=True)
