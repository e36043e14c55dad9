"""The eager hot path: per-call plans found by one dict lookup, run without the custom-op machinery.

Everything about a call that depends only on its key (the op, its tensors' shapes, strides, dtype and
device, its other arguments and flags) is worked out once, when the key is first seen: argument checks,
geometry, the dispatcher's Problem and Config, grids, index widths, launch flags, output layouts. That
is a `Plan`. A later call with the same key costs one dict lookup, the output allocations and the
launches. Only calls that passed every check make a plan, so bad input always reaches the checks and
gets their error.

Public ops take this path when nothing needs to see their `torch.library` custom ops (`eager`):
torch.compile and torch.export trace the custom ops, as do dispatch modes (FakeTensorMode, opcheck),
functorch transforms and tensor subclasses or modes with `__torch_function__`. There, a plan runs its
launches directly, or through `_EagerFunction`, a plain `torch.autograd.Function` calling the custom op's
own `setup_context` and backward, when autograd records the call. Those backwards call their gradient
ops through `call`, which takes the same path: the plan of the gradient op's key when the backward is
eager and not itself recorded (no create_graph), the custom op otherwise.

Plans hold the dispatcher's decisions, so whatever changes a decision drops them: `dispatch.forget`,
`set_backend`, `set_autotune`, `_checks.running_as`. While decisions are tuned or observed
(`dispatch.tuning`, `dispatch.recording`, bench.static's probes) plans are built for each call and not
kept (`uncached`). At most MAX_PLANS plans are kept; the oldest goes first.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Hashable, Iterator, NamedTuple, TypeVar

import torch

MAX_PLANS = 4096

T = TypeVar("T")
_PLANS: dict[Hashable, object] = {}
_uncached = 0  # > 0 inside `uncached` blocks


class Autograd(NamedTuple):
    """A custom op's autograd, as given to its `register_autograd`."""

    setup_context: Callable
    backward: Callable


class Plan:
    """One call's precomputed work. `run(*tensors)` launches and returns what the op's custom op returns;
    `args` are the custom op's other arguments (after its tensors), which its `setup_context` reads;
    `autograd` is None when `run` needs none of ours (PyTorch's own op, or no gradient); `first` says that
    the public op returns the first of the custom op's outputs; `device` is the device of the call's
    tensors when `run` launches our kernels (None when it runs PyTorch's ops, which mind devices
    themselves)."""

    __slots__ = ("run", "args", "autograd", "first", "device", "_cuda")

    def __init__(self, run: Callable, args: tuple = (), autograd: Autograd | None = None, first: bool = False,
                 device: torch.device | None = None):
        self.run, self.args, self.autograd, self.first, self.device = run, args, autograd, first, device
        # Triton launches on CUDA's current device: the index to make current, None where nothing is needed.
        self._cuda = device.index if device is not None and device.type == "cuda" else None

    def __call__(self, needs_grad: bool, *tensors: torch.Tensor | None):
        """Run the plan on the call's tensors, with their CUDA device current (plans are keyed on the device,
        so this is one comparison with the current one); `needs_grad`: autograd records the call."""
        if self._cuda is not None and self._cuda != torch.cuda.current_device():
            with torch.cuda.device(self._cuda):
                return self._call(needs_grad, tensors)
        return self._call(needs_grad, tensors)

    def _call(self, needs_grad: bool, tensors: tuple):
        if needs_grad and self.autograd is not None:
            return _apply_eager(*[t if t is None else _unwrap_if_dead(t) for t in tensors], self)
        try:
            out = self.run(*tensors)
        except RuntimeError:
            # A tensor that escaped a finished functorch transform (a dead wrapper) has no storage, and a
            # launch asks each tensor for its data pointer before it starts anything: run again on the
            # unwrapped tensors. Trying first costs the common call nothing; unwrapping every call would not.
            unwrapped = [t if t is None else _unwrap_if_dead(t) for t in tensors]
            if all(u is t for u, t in zip(unwrapped, tensors)):
                raise
            out = self.run(*unwrapped)
        return out[0] if self.first else out


class _EagerFunction(torch.autograd.Function):
    """A custom op's autograd without the custom-op machinery: forward runs the plan (the last argument)
    and the op's own setup_context on the op's arguments; backward is the op's. The op's backward pads
    its gradients with None up to len(ctx.needs_input_grad) (`_shared.input_grads`), which covers the
    plan. (Forward takes ctx rather than a separate setup_context: Function.apply binds the arguments of
    a forward without ctx through inspect.signature, which costs more than the whole call otherwise.)

    When the public op returns only the custom op's first output (`Plan.first`), so does the Function:
    the others (a stored intermediate, winning taps) are non-differentiable extras the op's
    setup_context saves, and every output autograd tracks costs host time. Their gradients, which the
    op's backward takes and ignores, are None."""

    @staticmethod
    def forward(ctx, *inputs):
        plan = inputs[-1]
        output = plan.run(*inputs[:-1])
        ctx.op_backward = plan.autograd.backward
        plan.autograd.setup_context(ctx, (*inputs[:-1], *plan.args), output)
        ctx.extras = len(output) - 1 if plan.first else 0
        return output[0] if plan.first else output

    @staticmethod
    def backward(ctx, *grads):
        return ctx.op_backward(ctx, *grads, *(None,) * ctx.extras)


# `_EagerFunction.apply` without torch.autograd.Function's Python wrapper around the C one (a large part of
# autograd recording's host cost): the wrapper binds default arguments (forward has none), routes to
# functorch when a transform is active (`eager` excluded that) and unwraps functorch's dead wrappers
# (tensors that escaped a finished transform), which `Plan._call` still does for the tensors it passes.
_apply_eager = super(torch.autograd.Function, _EagerFunction).apply
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def eager(*tensors: torch.Tensor | None) -> bool:
    """Whether a public op on `tensors` may run its plan: nothing traces or intercepts the call (see the
    module docstring), so no one needs to see the custom op."""
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._are_functorch_transforms_active() or torch._C._has_torch_function(tensors))


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on `tensors`."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def meta(t: torch.Tensor | None) -> object:
    """What a plan depends on of a tensor: shape, strides, dtype and device (anything else, None or a
    wrong argument, as it is: it keys a plan only once the op's checks accept it)."""
    return (t.shape, t.stride(), t.dtype, t.device) if isinstance(t, torch.Tensor) else t


def plan(key: tuple, build: Callable[[], T]) -> T:
    """The plan of `key` (a `Plan`, or whatever else an op's calls need, as drop_block2d's pair of
    passes), built (and kept) on first sight. An argument that cannot be hashed (a list where a tuple
    would do) is made a tuple; anything else unhashable gets a fresh plan every call."""
    try:
        found = _PLANS.get(key)
    except TypeError:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in key)
        try:
            found = _PLANS.get(key)
        except TypeError:
            return build()
    if found is None:
        found = build()
        if not _uncached:
            if len(_PLANS) >= MAX_PLANS:
                try:
                    _PLANS.pop(next(iter(_PLANS)), None)
                except (StopIteration, RuntimeError):  # another thread (autograd's) changed the dict meanwhile
                    pass
            _PLANS[key] = found
    return found


def clear() -> None:
    """Drop every plan: a decision they hold may have changed."""
    _PLANS.clear()


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """Inside the block every call builds its plan afresh and keeps none, so every decision is taken (and
    seen) again."""
    global _uncached
    _uncached += 1
    clear()
    try:
        yield
    finally:
        _uncached -= 1


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with `t`'s shape, strides and dtype, for working out layouts without touching data."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def allocator(like: torch.Tensor, device: torch.device) -> Callable[[], torch.Tensor]:
    """A function returning a new uninitialised tensor on `device` with `like`'s shape, strides and dtype
    (`like` is typically a meta tensor)."""
    return functools.partial(torch.empty_strided, tuple(like.shape), like.stride(), dtype=like.dtype, device=device)


# Custom ops that backward passes call: name -> (how many leading arguments are tensors, planner).
_PLANNERS: dict[str, tuple[int, Callable]] = {}


def plannable(name: str, tensors: int, planner: Callable) -> None:
    """Let backward passes run the custom op `tritonconv::{name}` through plans (`call`): `planner(*args)`,
    given the op's arguments, returns run(*tensors) for its first `tensors` arguments, what the op's own
    implementation then calls."""
    _PLANNERS[name] = (tensors, planner)


def call(name: str, *args: object) -> torch.Tensor:
    """`torch.ops.tritonconv.{name}(*args)` as a backward pass calls it. Eager, and not itself recorded by
    autograd (a backward without create_graph), it is the plan of the call's key, as the public ops'
    forward calls are: one lookup, then the launches, without the custom-op machinery or rebuilding the
    launch. Otherwise (tracing, double backward) the custom op itself, which those need to see."""
    count, planner = _PLANNERS[name]
    tensors = args[:count]
    if not eager(*tensors) or needs_grad(*tensors):
        return getattr(torch.ops.tritonconv, name)(*args)
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor)), None)
    # Backward passes hand geometry over as lists (what the op's schema gives setup_context): tuples here,
    # so the key hashes at the first try. Weight gradients split their reduction through a workspace or
    # through atomics by torch's deterministic-algorithms flag, which a user may flip between steps.
    rest = (tuple(a) if isinstance(a, list) else a for a in args[count:])
    key = (name, torch.are_deterministic_algorithms_enabled(), *map(meta, tensors), *rest)
    found = plan(key, lambda: Plan(planner(*args), device=device))
    return found(False, *tensors)


def planned(name: str, *args: object) -> Callable:
    """The launch `call` would plan for these arguments of `tritonconv::{name}`, as run(*tensors), for a
    plan that runs another op's launches on every call: it holds this, keyed by its own key, instead of
    building `call`'s key per call."""
    return _PLANNERS[name][1](*args)


def register_autograd(op, backward: Callable, setup_context: Callable) -> Autograd:
    """Register a custom op's autograd and return it for the op's plans, so that both paths run the same
    setup_context and backward."""
    op.register_autograd(backward, setup_context=setup_context)
    return Autograd(setup_context, backward)


def launcher(kernel, grid: tuple[int, ...], **options: object) -> Callable:
    """`kernel[grid]` with its constexpr and compile options bound: call it with the kernel's runtime
    arguments. It binds `kernel.run` (which `kernel[grid](...)` calls) when the plan is made, so a stub
    of the launch must be in place before plans are (`_checks.running_as` drops them)."""
    return functools.partial(kernel.run, grid=grid, warmup=False, **options)


def example_seed(like: torch.Tensor) -> torch.Tensor:
    """A Philox seed tensor on `like`'s device for building a random op's plan (tuning launches read it);
    each call then draws its own."""
    return torch.zeros(1, dtype=torch.int64, device=like.device)
