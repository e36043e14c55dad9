"""The dispatch seam: every kernel launch asks this module for its tile configuration.

A launcher describes its call as a `Problem` (which kernel, the GEMM-shaped sizes of the work, dtype and
layout) and a `prepare(config)` function that works out the launch for a configuration (`runner`);
`config_for` returns the `Config` (constexpr block sizes, `num_warps`, `num_stages`) to launch with. The
answer comes from, in order:

1. Triton's interpreter: always the kernel's heuristic, one configuration (the interpreter cannot
   autotune, and pays ~150 us per program, so its heuristics size tiles for few programs).
2. This process's memory of earlier decisions (the fast path: one dict lookup).
3. The persistent cache (`tritonconv._cache`), keyed by kernel, shape bucket, dtype, layout, GPU name and
   compute capability, triton version and a hash of the kernel's source file. An entry that does not
   describe a configuration the kernel could run (`check_entry`) is dropped with one warning.
4. Autotuning, when allowed (`TRITONCONV_AUTOTUNE=1` at import, the default; `set_autotune`; inside
   `tritonconv.tune`): the kernel's declared space, pruned of what cannot fit or cannot pay, each
   candidate checked against the heuristic's output and then timed; the winner goes to the cache.
5. Otherwise the heuristic.

Each kernel declares its heuristic, its tuning space and (unless it is a GEMM) its program count once,
beside its launcher, with `register`. What the heuristics assume about the GPU is in
`tritonconv.heuristics`. Eager calls keep each call's decisions in a plan (`tritonconv._plans`); whatever
changes a decision here drops the plans.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import inspect
import itertools
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
import triton

from tritonconv import _plans, testing
from tritonconv._cache import ConfigCache
from tritonconv._checks import interpreting
from tritonconv._progress import progress
from tritonconv.heuristics import SM_COUNT, SMEM_PER_BLOCK, cdiv, next_power_of_2
from tritonconv.static_checks import static_rejects


@dataclass(frozen=True)
class Config:
    """One launch configuration: constexpr meta-parameters plus `num_warps` and `num_stages`."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3

    @staticmethod
    def of(num_warps: int = 4, num_stages: int = 3, **meta: int) -> "Config":
        return Config(tuple(sorted(meta.items())), num_warps, num_stages)

    def __getitem__(self, name: str) -> int:
        return dict(self.meta)[name]

    def get(self, name: str, default: int | None = None) -> int | None:
        return dict(self.meta).get(name, default)

    def launch_kwargs(self) -> dict[str, int]:
        """Keyword arguments for `kernel[grid](..., **config.launch_kwargs())`."""
        return {**dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def to_json(self) -> dict:
        return {"meta": dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}

    @staticmethod
    def from_json(data: dict) -> "Config":
        return Config.of(data["num_warps"], data["num_stages"], **data["meta"])

    def __str__(self) -> str:
        meta = ", ".join(f"{k}={v}" for k, v in self.meta)
        return f"{meta}, num_warps={self.num_warps}, num_stages={self.num_stages}"


@dataclass(frozen=True)
class Problem:
    """What a launch computes, in GEMM terms: `batch` independent [m, k] x [k, n] products.

    For the implicit-GEMM conv kernels m, n and k are the GEMM sizes of one group (or one tap, for the
    weight gradient) and `batch` counts groups (times taps). Elementwise kernels use m alone; `extra`
    carries whatever else changes the best configuration (kernel size, stride...).
    """

    kernel: str
    m: int
    n: int = 1
    k: int = 1
    batch: int = 1
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    extra: tuple[tuple[str, object], ...] = field(default=())

    def bucket(self) -> str:
        """The cache key's shape part. m (which grows with the batch size) is rounded up to a power of
        two, so a changing batch size does not retune every call; the rest is exact."""
        layout = "nhwc" if self.channels_last else "nchw"
        extra = "".join(f",{k}={v}" for k, v in self.extra)
        return (f"m<={next_power_of_2(max(self.m, 1))},n={self.n},k={self.k},batch={self.batch},"
                f"{str(self.dtype).removeprefix('torch.')},{layout}{extra}")


# ---------------------------------------------------------------------------------------------------------
# The kernel registry.
# ---------------------------------------------------------------------------------------------------------

Heuristic = Callable[[Problem, bool], Config]
Space = Callable[[Problem], list[Config]]
# What a launch of a Problem with a Config amounts to: its programs (grid size), or the steps of the
# reduction that SPLIT_K divides among programs.
Count = Callable[[Config, Problem], int]


def gemm_programs(config: Config, problem: Problem) -> int:
    """Programs of a GEMM-shaped launch: [BLOCK_M, BLOCK_N] output tiles of each of the `batch` products,
    times SPLIT_K reduction splits."""
    tiles = cdiv(problem.m, config["BLOCK_M"]) * cdiv(problem.n, config["BLOCK_N"])
    return tiles * problem.batch * config.get("SPLIT_K", 1)


def gemm_steps(config: Config, problem: Problem) -> int:
    """Reduction steps of a GEMM-shaped launch: BLOCK_K elements of k each."""
    return cdiv(problem.k, config["BLOCK_K"])


# For the cost model (bench/cost.py): the average iterations per program of each loop of a kernel.
Trips = Callable[[Problem, Config, Mapping[str, object]], tuple[float, ...]]


@dataclass(frozen=True)
class KernelSpec:
    """How to configure one kernel: a timing-free heuristic, the space autotuning searches, and how many
    programs a configuration launches and reduction steps it may split."""

    name: str
    family: str
    fn: object  # the @triton.jit function, whose source file's hash keys the cache
    heuristic: Heuristic
    space: Space
    programs: Count = gemm_programs
    steps: Count = gemm_steps
    trips: Trips | None = None

    def source_hash(self) -> str:
        return _source_hash(self.fn)


_KERNELS: dict[str, KernelSpec] = {}


def register(kernel: str, family: str, fn: object, heuristic: Heuristic, space: Space, *,
             programs: Count = gemm_programs, steps: Count = gemm_steps, trips: Trips | None = None) -> None:
    """Declare how to configure `kernel` (the name used in Problem.kernel).

    `family` names the kind of kernel ("implicit_gemm", "depthwise", ...); `fn` is the @triton.jit
    function launched. `heuristic(problem, interpreter)` picks one Config without timing (the
    interpreter's is the only config it ever runs); `space(problem)` lists every Config worth timing on a
    GPU, before `prune`. `programs(config, problem)` is the launch's grid size (launchers size their grid
    with it, so pruning counts what really runs) and `steps(config, problem)` the reduction steps a
    SPLIT_K meta-parameter divides; both default to a GEMM's (`gemm_programs`, `gemm_steps`).
    `trips(problem, config, args)`, for the cost model (bench/cost.py), gives the average iterations per
    program of each loop of the kernel, one entry per source loop in order (an outer loop before the
    loops it holds), from the launch's arguments by name (constexprs included).
    """
    if kernel in _KERNELS:
        raise ValueError(f"kernel {kernel!r} is registered twice")
    _KERNELS[kernel] = KernelSpec(kernel, family, fn, heuristic, space, programs, steps, trips)


def spec(kernel: str) -> KernelSpec:
    """The registered KernelSpec of `kernel`."""
    try:
        return _KERNELS[kernel]
    except KeyError:
        raise KeyError(f"no kernel {kernel!r} is registered; known: {kernels()}") from None


def kernels() -> list[str]:
    """Names of every registered kernel."""
    return sorted(_KERNELS)


_SOURCE_HASHES: dict[object, str] = {}


def _source_hash(fn: object) -> str:
    """Hash of the source file defining `fn`: editing any kernel there (or a helper it calls) invalidates
    the cache entries of every kernel in the file."""
    if fn not in _SOURCE_HASHES:
        module = inspect.getmodule(getattr(fn, "fn", fn))
        _SOURCE_HASHES[fn] = hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]
    return _SOURCE_HASHES[fn]


def product_space(num_warps: Sequence[int], num_stages: Sequence[int], **meta: Sequence[int]) -> list[Config]:
    """Every combination of the given meta-parameter values, warps and stages: a config-space factory."""
    names = sorted(meta)
    return [Config(tuple(zip(names, values)), w, s)
            for values in itertools.product(*(meta[n] for n in names)) for w in num_warps for s in num_stages]


# ---------------------------------------------------------------------------------------------------------
# Pruning: what cannot fit or cannot pay is never timed.
# ---------------------------------------------------------------------------------------------------------

def smem_bytes(config: Config, dtype: torch.dtype) -> int:
    """Shared memory a GEMM-shaped config's operand pipeline needs: stages * (A tile + B tile)."""
    m, n, k = config.get("BLOCK_M"), config.get("BLOCK_N"), config.get("BLOCK_K")
    if m is None or n is None or k is None:
        return 0
    return config.num_stages * (m * k + k * n) * torch.empty((), dtype=dtype).element_size()


def programs(config: Config, problem: Problem) -> int:
    """Programs a launch of `problem` with `config` runs (its kernel's registered count)."""
    return spec(problem.kernel).programs(config, problem)


def channel_pixel_programs(config: Config, problem: Problem) -> int:
    """Program count of kernels tiled by `kernels.common.sample_channel_pixel_tile`: one program per
    (sample, BLOCK_C channels, BLOCK_P pixels) tile, with problem.batch samples, problem.m channels and
    problem.n pixels."""
    return problem.batch * cdiv(problem.m, config["BLOCK_C"]) * cdiv(problem.n, config["BLOCK_P"])


def prune(problem: Problem, configs: Sequence[Config], rejected: frozenset = frozenset()) -> list[Config]:
    """Drop configs that cannot fit or cannot pay, keeping order and dropping duplicates:

    - a block over twice the problem's extent on its axis (it only adds masked lanes) — blocks of 16
      always stay, since tl.dot needs them;
    - a reduction split (SPLIT_K) into more pieces than it has steps;
    - more shared memory than one block may use;
    - configurations the static checks found not to compile or to spill (`rejected`);
    - too few programs: when some candidate fills the GPU, those that fill under a quarter of it.

    Steps and programs are counted by the kernel's registered functions (see `register`).
    """
    kernel = spec(problem.kernel)
    extents = {"BLOCK_M": problem.m, "BLOCK_N": problem.n, "BLOCK_K": problem.k, "BLOCK": problem.m}
    kept: list[Config] = []
    for cfg in dict.fromkeys(configs):
        meta = dict(cfg.meta)
        if any(meta[name] > max(16, 2 * next_power_of_2(max(extent, 1)))
               for name, extent in extents.items() if name in meta):
            continue
        if meta.get("SPLIT_K", 1) > 1 and meta["SPLIT_K"] > kernel.steps(cfg, problem):
            continue
        if smem_bytes(cfg, problem.dtype) > SMEM_PER_BLOCK or cfg in rejected:
            continue
        kept.append(cfg)
    if any(kernel.programs(c, problem) >= SM_COUNT for c in kept):
        kept = [c for c in kept if kernel.programs(c, problem) >= SM_COUNT // 4]
    return kept


# ---------------------------------------------------------------------------------------------------------
# Decisions: memory, cache, tuning.
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Which configuration a launch of `problem` uses, and where it came from."""

    problem: Problem
    config: Config
    source: str  # "heuristic", "cache" or "tuned"
    tune_seconds: float = 0.0
    time_ms: float | None = None
    backend: str = "triton"  # "torch" when backend="auto" chose PyTorch's op for the call

    @property
    def family(self) -> str:
        return "pytorch" if self.backend == "torch" else spec(self.problem.kernel).family


Launch = Callable[[Config], torch.Tensor]
Timer = Callable[[Callable[[], object]], float]

CACHE = ConfigCache()
_MEMORY: dict[tuple[Problem, bool, torch.device | None], Decision] = {}  # (problem, tuning allowed, device)
_FORCE_TUNING: contextvars.ContextVar[bool | None] = contextvars.ContextVar("tritonconv_force_tuning", default=None)
_RECORDERS: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("tritonconv_recorders", default=())


def default_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds of `fn` with Triton's do_bench, which flushes L2 before every repetition so
    candidates are timed on cold caches, as a real layer sees its inputs."""
    return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")


TIMER: Timer = default_timer


def _autotune_from_env() -> bool:
    return os.environ.get("TRITONCONV_AUTOTUNE", "1") != "0"


# TRITONCONV_AUTOTUNE, read once at import and again only by `set_autotune(None)`.
_AUTOTUNE = _autotune_from_env()


def set_autotune(enabled: bool | None) -> None:
    """Whether new shapes are autotuned on first use (True) or take the heuristic unless cached (False);
    None re-reads TRITONCONV_AUTOTUNE (not 0: on, the default). The environment variable is read once, at
    import: to change it at runtime call this function, not os.environ."""
    global _AUTOTUNE
    _AUTOTUNE = _autotune_from_env() if enabled is None else bool(enabled)
    _plans.clear()


def get_autotune() -> bool:
    """Whether new shapes are autotuned on first use (`set_autotune`)."""
    return _AUTOTUNE


def tuning_allowed() -> bool:
    """Tuning is on when forced by `tuning(True)` (tritonconv.tune), else when `set_autotune` (or
    TRITONCONV_AUTOTUNE at import) says so; never in the interpreter."""
    if interpreting():
        return False
    forced = _FORCE_TUNING.get()
    return _AUTOTUNE if forced is None else forced


@contextlib.contextmanager
def tuning(enabled: bool) -> Iterator[None]:
    """Force tuning on or off inside the block, whatever `set_autotune` says; no plan is kept meanwhile."""
    token = _FORCE_TUNING.set(enabled)
    try:
        with _plans.uncached():
            yield
    finally:
        _FORCE_TUNING.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[list[Decision]]:
    """Collect every Decision made inside the block (tritonconv.explain and tritonconv.tune use it): no plan
    is kept meanwhile, so every call takes its decisions again."""
    decisions: list[Decision] = []
    token = _RECORDERS.set(_RECORDERS.get() + (decisions,))
    try:
        with _plans.uncached():
            yield decisions
    finally:
        _RECORDERS.reset(token)


# The device of the tensors a launcher was called with, while it runs (see `on_inputs_device`).
_LAUNCH_DEVICE: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("tritonconv_launch_device",
                                                                                    default=None)


def device_context(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` made CUDA's current device inside the block (Triton launches on the current device and
    its current stream); nothing for the CPU, where the interpreter runs."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def launch_device(device: torch.device) -> Iterator[None]:
    """Launch on `device` inside the block: it is CUDA's current device, and cache keys name its GPU."""
    token = _LAUNCH_DEVICE.set(device)
    try:
        with device_context(device):
            yield
    finally:
        _LAUNCH_DEVICE.reset(token)


def on_inputs_device(launcher: Callable) -> Callable:
    """Decorate a launcher (a function that launches kernels on its tensor arguments): its tensors must
    share one device, and it runs under `launch_device` of that device, so a model on cuda:1 launches on
    cuda:1 whatever the current device, and tunes and caches for that GPU."""

    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if len(devices) != 1:
            raise ValueError(f"{launcher.__name__} got tensors on {sorted(map(str, devices))}: every tensor of "
                             "one call must be on one device; move them with .to(device)")
        with launch_device(devices.pop()):
            return launcher(*args, **kwargs)

    return guarded


_DEVICE_TAGS: dict[int, str] = {}


def _device_tag() -> str:
    """GPU name and compute capability of the device being launched on (`launch_device`; else the
    current device), queried once per device and never at import time."""
    if not torch.cuda.is_available():
        return "cpu"
    device = _LAUNCH_DEVICE.get()
    index = device.index if device is not None and device.type == "cuda" and device.index is not None \
        else torch.cuda.current_device()
    if index not in _DEVICE_TAGS:
        major, minor = torch.cuda.get_device_capability(index)
        _DEVICE_TAGS[index] = f"{torch.cuda.get_device_name(index)}|sm{major}{minor}"
    return _DEVICE_TAGS[index]


def cache_key(problem: Problem) -> str:
    """The persistent cache key of a problem on the current device and software."""
    kernel = spec(problem.kernel)
    return "|".join((problem.kernel, problem.bucket(), _device_tag(), f"triton={triton.__version__}",
                     f"src={kernel.source_hash()}"))


def decide(problem: Problem, launch: Launch | None = None) -> Decision:
    """How a launch of `problem` is configured (see the module docstring for the order of sources)."""
    kernel = spec(problem.kernel)
    if interpreting():
        return Decision(problem, kernel.heuristic(problem, True), "heuristic")
    allowed = tuning_allowed() and launch is not None
    memo_key = (problem, allowed, _LAUNCH_DEVICE.get())
    remembered = _MEMORY.get(memo_key)
    if remembered is not None:
        return remembered
    key = cache_key(problem)
    entry = CACHE.get(key)
    config = _checked(key, entry, lambda entry: check_entry(problem, entry), allowed)
    if config is not None:
        decision = Decision(problem, config, "cache", time_ms=entry.get("time_ms"))
    elif allowed:
        decision = autotune(problem, launch)
        CACHE.put(key, {**_entry_header(problem), "config": decision.config.to_json(), "time_ms": decision.time_ms,
                        "tune_seconds": round(decision.tune_seconds, 3)})
    else:
        decision = Decision(problem, kernel.heuristic(problem, False), "heuristic")
    _MEMORY[memo_key] = decision
    return decision


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def check_entry(problem: Problem, entry: object) -> Config:
    """The Config a cache entry for `problem` holds, or ValueError saying why it holds none the kernel
    could run: its meta-parameters must be the kernel's (the names its heuristic, or one configuration of
    its tuning space, sets: conv2d_forward's TMA candidates add one), each an int
    within the range of the values the kernel's heuristic and tuning space use for the shape bucket,
    and a power of two wherever all of those are (block sizes); num_warps a power of two and
    num_stages >= 1, both within that range too. A cache file is user-writable, so an entry is data to
    check, not a trusted config: Triton rejects an impossible block deep inside a launch."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise ValueError("it has no config")
    data = entry["config"]
    meta, warps, stages = data.get("meta"), data.get("num_warps"), data.get("num_stages")
    kernel = spec(problem.kernel)
    # The bucket's largest problem too: an entry tuned at any m of the bucket must pass at every other.
    largest = replace(problem, m=triton.next_power_of_2(max(problem.m, 1)))
    known = [c for p in (problem, largest) for c in (kernel.heuristic(p, False), *kernel.space(p))]
    names = sorted(dict(known[0].meta))
    if not isinstance(meta, dict) or not any(sorted(meta) == sorted(dict(c.meta)) for c in known):
        raise ValueError(f"its meta-parameters {sorted(meta) if isinstance(meta, dict) else meta!r} are not "
                         f"the kernel's {names}")
    values = {name: [dict(c.meta)[name] for c in known if name in dict(c.meta)] for name in meta}
    values["num_warps"] = [c.num_warps for c in known]
    values["num_stages"] = [c.num_stages for c in known]
    for name, value in {**meta, "num_warps": warps, "num_stages": stages}.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is not an int")
        if not _is_pow2(value) and all(_is_pow2(v) for v in values[name]):
            raise ValueError(f"{name}={value} is not a power of two")
        low, high = min(values[name]), max(values[name])
        if not low <= value <= high:
            raise ValueError(f"{name}={value} is outside the kernel's range [{low}, {high}]")
    return Config.of(warps, stages, **meta)


_DROPPED: set[str] = set()


def _checked(key: str, entry: object, check: Callable[[object], object], allowed: bool) -> object:
    """`check(entry)`, what a cache entry holds, or None when there is no entry or `check` rejects it
    (ValueError), with one warning per key naming it: a damaged or foreign entry must not break an op,
    so the caller falls back to tuning or the heuristic."""
    if entry is None:
        return None
    try:
        return check(entry)
    except ValueError as err:
        if key not in _DROPPED:
            _DROPPED.add(key)
            fallback = "tuning it again" if allowed else "using the heuristic"
            warnings.warn(f"tritonconv: ignoring the cache entry {key!r}: {err}; {fallback}", RuntimeWarning,
                          stacklevel=4)
        return None


def _check_backend_entry(entry: object) -> str:
    """The backend a "backend|" cache entry chose, or ValueError."""
    if not isinstance(entry, dict) or entry.get("backend") not in BACKEND_CHOICES:
        raise ValueError(f"its backend is not one of {BACKEND_CHOICES}")
    return entry["backend"]


def _entry_header(problem: Problem) -> dict:
    """The readable part of a cache entry (`python -m tritonconv cache list` prints it)."""
    return {"kernel": problem.kernel, "shape": problem.bucket(), "device": _device_tag(),
            "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def config_for(problem: Problem, launch: Launch | None = None) -> Config:
    """The configuration to launch `problem.kernel` with. `launch(config)` runs the kernel with `config`
    and returns its output; it is called only when tuning."""
    decision = decide(problem, launch)
    _record(decision)
    return decision.config


def runner(problem: Problem, prepare: Callable[[Config], Callable], *example: torch.Tensor | None) -> Callable:
    """What a launcher returns: `prepare(config)` with `problem`'s configuration. `prepare(config)` works
    out a launch with `config` (grid, arguments) and returns a function that launches it on tensors like
    `example` and returns the output, or a tuple of outputs; tuning calls those functions on `example`
    and compares their (first) outputs."""
    def launch(cfg: Config) -> torch.Tensor:
        out = prepare(cfg)(*example)
        return out[0] if isinstance(out, tuple) else out

    return prepare(config_for(problem, launch))


def _record(decision: Decision) -> None:
    for recorder in _RECORDERS.get():
        recorder.append(decision)


def forget() -> None:
    """Drop this process's memory of decisions, and the plans that hold them (after the cache is cleared
    or the timer replaced)."""
    _MEMORY.clear()
    _plans.clear()


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a candidate's output `a` matches the heuristic's `b`, allowing for a different summation
    order: each is within `testing.tolerance` of the exact result, so they differ by at most twice it."""
    return testing.mismatch(a.float(), b.float(), 2 * testing.tolerance(dtype, b.device), "candidate") is None


def tune_budget() -> int:
    """Candidates timed per shape: $TRITONCONV_TUNE_CONFIGS, default 16. Each new candidate costs a
    compile (about 0.5-1 s) before its timing, so 16 keep tuning a shape near the 10 s target."""
    return max(1, int(os.environ.get("TRITONCONV_TUNE_CONFIGS", "16")))


def nearest(heuristic: Config, candidates: Sequence[Config], budget: int) -> list[Config]:
    """The heuristic and the `budget` - 1 candidates closest to it (fewest meta-parameters, warps and
    stages that differ; ties keep the space's order): tuning searches the heuristic's neighbourhood."""

    def distance(cfg: Config) -> int:
        meta, base = dict(cfg.meta), dict(heuristic.meta)
        return (sum(meta.get(k) != base.get(k) for k in meta.keys() | base.keys())
                + (cfg.num_warps != heuristic.num_warps) + (cfg.num_stages != heuristic.num_stages))

    others = sorted((c for c in dict.fromkeys(candidates) if c != heuristic), key=distance)
    return [heuristic, *others[:budget - 1]]


def _static_target() -> str:
    """The static checks' target closest to the current GPU: sm_80 before Hopper, else sm_90."""
    return "sm_80" if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9 else "sm_90"


def autotune(problem: Problem, launch: Launch) -> Decision:
    """Time every pruned candidate of `problem` and return the fastest whose output matches the
    heuristic's. A candidate that fails to compile or launch, or computes something else, is dropped."""
    kernel = spec(problem.kernel)
    start = time.perf_counter()
    heuristic = kernel.heuristic(problem, False)
    rejected = static_rejects(_static_target()).get((problem.kernel, str(problem.dtype), problem.channels_last),
                                                    frozenset())
    candidates = nearest(heuristic, prune(problem, [heuristic, *kernel.space(problem)], rejected), tune_budget())
    reference = launch(heuristic).clone()
    times: dict[Config, float] = {}
    for cfg in progress(candidates, f"tuning {problem.kernel} [{problem.bucket()}]", leave=False):
        try:
            if not _close(launch(cfg), reference, problem.dtype):
                continue
            times[cfg] = TIMER(lambda cfg=cfg: launch(cfg))
        except (triton.runtime.errors.OutOfResources, triton.CompilationError, RuntimeError):
            continue
    best = min(times, key=times.__getitem__) if times else heuristic
    return Decision(problem, best, "tuned", time.perf_counter() - start, times.get(best))


# ---------------------------------------------------------------------------------------------------------
# Backend choice: with backend="auto", PyTorch's own op (cuDNN or its native kernel) is one more
# candidate, so "auto" is never slower than PyTorch. The default backend is ours alone.
# ---------------------------------------------------------------------------------------------------------

BACKENDS = ("triton", "auto")
BACKEND_CHOICES = ("triton", "torch")  # what backend="auto" decides per shape
_BACKEND = "triton"


def set_backend(backend: str) -> None:
    """Choose the default backend of `tritonconv.conv2d` (so of every convolution, depthwise and 1x1
    included, and of `tritonconv.nn.Conv2d`): "triton" (ours, the default) or "auto" (ours or PyTorch's,
    whichever is faster for the shape, decided by timing once and cached). "auto" is an eager-mode
    choice: under torch.compile keep "triton", whose call path is free of Python-side state."""
    global _BACKEND
    _BACKEND = _check_backend(backend)
    _plans.clear()


def get_backend() -> str:
    """The default backend set by `set_backend`."""
    return _BACKEND


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_torch(problem: Problem, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor],
              backend: str | None, device: torch.device | None = None) -> bool:
    """Whether a call described by `problem` (its forward kernel's Problem), on tensors of `device`
    (None: the current device), should run PyTorch's op.

    Only with backend "auto" (the argument, else the default), outside the interpreter; the choice is
    timed once per shape bucket and GPU when tuning is allowed and kept in the same cache as
    configurations.
    """
    if _check_backend(backend or _BACKEND) == "triton" or interpreting():
        return False
    with launch_device(device) if device is not None else contextlib.nullcontext():
        return _use_torch(problem, ours, theirs)


def _use_torch(problem: Problem, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor]) -> bool:
    allowed = tuning_allowed()
    memo_key = (Problem("backend|" + problem.kernel, problem.m, problem.n, problem.k, problem.batch,
                        problem.dtype, problem.channels_last, problem.extra), allowed, _LAUNCH_DEVICE.get())
    decision = _MEMORY.get(memo_key)
    if decision is None:
        key = "backend|" + cache_key(problem)
        entry = CACHE.get(key)
        backend = _checked(key, entry, _check_backend_entry, allowed)
        if backend is not None:
            decision = Decision(problem, Config(()), "cache", time_ms=entry.get("time_ms"), backend=backend)
        elif allowed:
            start = time.perf_counter()
            ours()  # tunes our kernels first, so their best configuration is what gets timed
            times = {"triton": TIMER(ours), "torch": TIMER(theirs)}
            winner = min(times, key=times.__getitem__)
            decision = Decision(problem, Config(()), "tuned", time.perf_counter() - start, times[winner], winner)
            CACHE.put(key, {**_entry_header(problem), "backend": winner, "time_ms": times[winner], "times_ms": times})
        else:
            decision = Decision(problem, Config(()), "heuristic")
        _MEMORY[memo_key] = decision
    if decision.backend == "torch":
        _record(decision)
    return decision.backend == "torch"
