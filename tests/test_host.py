"""The eager host path (tritonconv._plans): what a plan may keep, what drops plans, and the CI check on
host overhead. Launches are stubbed out (bench.host.stubbed_launches), so no kernel runs here."""

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import tritonconv as tc
from bench import host
from conftest import assert_close, deterministic_algorithms, rand
from tritonconv import _checks, _plans, dispatch

# Cached eager call, launches stubbed, as a multiple of an empty autograd.Function's forward call in the
# same run (for "step", forward and backward, of the empty Function's step). Targets (issue 16): 4x
# forward, 6x with autograd recording; measured here 1.5-3x, 3.5-6x and 2-8.5x (bench --suite host). CI
# runs on two loaded cores, so the recording check allows 8x, the step 12x (it was 6-27x before the
# backward passes ran plans).
BOUNDS = {"fwd": 4.0, "grad": 8.0, "step": 12.0}


@pytest.fixture
def stubbed():
    with host.stubbed_launches():
        yield


def _conv(n: int = 2, **kwargs) -> torch.Tensor:
    return tc.conv2d(torch.empty(n, 4, 9, 9), torch.empty(8, 4, 3, 3), **kwargs)


@pytest.mark.parametrize("mode", sorted(BOUNDS))
def test_cached_eager_call_costs_a_few_empty_functions(mode):
    """Host time per cached call of every op, as a multiple of an empty autograd.Function timed in the same
    run (min over rounds of CPU time). Ops over the bound are timed again, three times at most, each time
    beside the Function again, and keep their best ratio: load on a shared CI machine comes and goes
    between runs, so only a ratio of times taken together means anything."""
    times = host.host_times(number=200, repeats=5, modes=(mode,))[mode]
    ratios = {op: t / times[host.FUNCTION] for op, t in times.items() if op not in (host.FUNCTION, host.CUSTOM_OP)}
    for _ in range(3):
        slow = [op for op, r in ratios.items() if r > BOUNDS[mode]]
        if not slow:
            break
        again = host.host_times(slow, number=200, repeats=5, modes=(mode,))[mode]
        ratios.update({op: min(ratios[op], again[op] / again[host.FUNCTION]) for op in slow})
    assert max(ratios.values()) <= BOUNDS[mode], {op: round(r, 1) for op, r in ratios.items()}


def test_checks_run_for_every_key(stubbed):
    """A plan keeps the verdict of the checks for its key only: a bad argument after good calls of the
    same shapes still gets its error, and a call that failed leaves no plan."""
    _conv()
    with pytest.raises(ValueError, match="padding must be"):
        _conv(padding="full")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        _conv(groups=3)
    assert len(_plans._PLANS) == 1


def test_plans_are_bounded(stubbed, monkeypatch):
    monkeypatch.setattr(_plans, "MAX_PLANS", 3)
    for n in range(1, 6):
        _conv(n)
    assert len(_plans._PLANS) == 3


def test_list_arguments_share_the_tuple_plan(stubbed):
    _conv(stride=(1, 1), padding=(1, 1))
    _conv(stride=[1, 1], padding=[1, 1])
    assert len(_plans._PLANS) == 1


def test_decision_changes_drop_plans(stubbed):
    """Plans hold the dispatcher's decisions: whatever may change one drops them, and no plan is kept
    while decisions are tuned."""
    for change in (lambda: tc.set_backend(tc.get_backend()), lambda: tc.set_autotune(tc.get_autotune()),
                   dispatch.forget):
        _conv()
        assert _plans._PLANS
        change()
        assert not _plans._PLANS
    _conv()
    with _checks.running_as(_checks.Mode.PROBE):
        assert not _plans._PLANS
        _conv()
    assert not _plans._PLANS
    with dispatch.tuning(False):
        _conv()
        assert not _plans._PLANS


def test_explain_sees_a_cached_call(stubbed):
    """explain records the decisions of a call whose plan was already made (plans are not kept while
    decisions are recorded)."""
    x, w = torch.empty(2, 4, 9, 9), torch.empty(8, 4, 3, 3)
    tc.conv2d(x, w)
    assert [launch["kernel"] for launch in tc.explain(tc.conv2d, x, w)["launches"]] == ["conv2d_forward"]
    assert [launch["kernel"] for launch in tc.explain(tc.conv2d, x, w)["launches"]] == ["conv2d_forward"]


def test_tf32_switch_makes_a_new_plan(stubbed):
    saved = torch.backends.cudnn.allow_tf32
    try:
        for allow in (True, False):
            torch.backends.cudnn.allow_tf32 = allow
            _conv()
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    assert len(_plans._PLANS) == 2


def test_autograd_records_through_the_plan(stubbed):
    """With inputs requiring grad, the eager call is recorded by the custom op's own autograd (through
    _plans._EagerFunction), not left without a backward."""
    x = torch.empty(2, 4, 9, 9, requires_grad=True)
    y = tc.conv2d(x, torch.empty(8, 4, 3, 3))
    assert y.requires_grad and type(y.grad_fn).__name__ == "_EagerFunctionBackward"
    with torch.no_grad():
        assert tc.conv2d(x, torch.empty(8, 4, 3, 3)).grad_fn is None


def test_recorded_call_returns_only_what_the_op_returns():
    """The eager Function records only the public op's output, not the custom op's extras (the separable
    op's stored intermediate): the backward still gets them from the context and is right."""
    x, wd, wp = rand(1, 3, 6, 5), rand(3, 1, 3, 3), rand(4, 3, 1, 1)
    for t in (x, wd, wp):
        t.requires_grad_()
    y = tc.depthwise_separable_conv2d(x, wd, wp, padding=1, activation="silu")
    assert type(y.grad_fn).__name__ == "_EagerFunctionBackward"
    dy = rand(*y.shape)
    y.backward(dy)
    ref = [t.detach().double().requires_grad_() for t in (x, wd, wp)]
    F = torch.nn.functional
    F.conv2d(F.silu(F.conv2d(ref[0], ref[1], padding=1, groups=3)), ref[2]).backward(dy.double())
    for t, r in zip((x, wd, wp), ref):
        assert_close(t.grad, r.grad, torch.float32)


def test_recorded_call_takes_tensors_left_by_a_functorch_transform():
    """A tensor that escaped a finished torch.func transform (a dead wrapper) is unwrapped before autograd
    records the call, as torch.autograd.Function.apply does (without it: "Cannot access storage of
    TensorWrapper")."""
    leaked = []

    def f(x):
        leaked.append(x * 2)
        return leaked[-1].sum()

    torch.func.grad(f)(rand(2, 3, 5, 5))
    x = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(x)
    w = rand(3, 1, 3, 3).requires_grad_()
    tc.depthwise_conv2d(x, w, padding=1).sum().backward()
    ref = w.detach().double().requires_grad_()
    torch.nn.functional.conv2d(torch._C._functorch.unwrap_if_dead(x).double(), ref, padding=1,
                               groups=3).sum().backward()
    assert_close(w.grad, ref.grad, torch.float32)

def test_dead_functorch_wrapper_without_grad(stubbed, monkeypatch):
    """Without autograd recording, a dead wrapper reaches the plan's launches as it is; a GPU launch asks
    every tensor argument for its data pointer (stubbed here as such a launch), which a dead wrapper
    refuses, so the plan runs again on the unwrapped tensors; an error of any other cause still raises."""
    leaked = []

    def f(x):
        leaked.append(x * 2)
        return leaked[-1].sum()

    torch.func.grad(f)(torch.rand(2, 3, 5, 5))
    x = leaked[0]
    launched = []

    def launch(self, *args, grid, warmup, **kwargs):
        launched.append([a.data_ptr() for a in args if isinstance(a, torch.Tensor)])

    monkeypatch.setattr(JITFunction, "run", launch)
    monkeypatch.setattr(InterpretedFunction, "run", launch)
    with torch.no_grad():
        assert tc.depthwise_conv2d(x, torch.empty(3, 1, 3, 3), padding=1).shape == (2, 3, 5, 5)
    assert launched and all(launched)

    def broken(self, *args, grid, warmup, **kwargs):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(JITFunction, "run", broken)
    monkeypatch.setattr(InterpretedFunction, "run", broken)
    _plans.clear()   # plans bind the launch when they are made
    with torch.no_grad(), pytest.raises(RuntimeError, match="launch failed"):
        tc.depthwise_conv2d(torch.empty(2, 3, 5, 5), torch.empty(3, 1, 3, 3), padding=1)


def test_backward_runs_plans(stubbed):
    """An eager backward (no create_graph) runs its gradient ops through plans, as the forward does: the
    second step of the same shapes makes no plan; with create_graph it calls the custom ops, which double
    backward and tracing need to see, and keeps no plan of them."""
    x, w = torch.empty(2, 4, 9, 9, requires_grad=True), torch.empty(8, 4, 3, 3, requires_grad=True)
    tc.conv2d(x, w).sum().backward()
    assert {key[0] for key in _plans._PLANS} == {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"}
    count = len(_plans._PLANS)
    tc.conv2d(x, w).sum().backward()
    assert len(_plans._PLANS) == count
    # The weight gradient's split reduction follows the deterministic-algorithms flag: a new plan each way.
    with deterministic_algorithms(not torch.are_deterministic_algorithms_enabled()):
        tc.conv2d(x, w).sum().backward()
    assert len(_plans._PLANS) == count + 2
    _plans.clear()
    y = tc.conv2d(x, w)
    torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    assert {key[0] for key in _plans._PLANS} == {"conv2d"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_replays_the_eager_calls():
    """The ops are capturable (no host synchronisation, outputs from the caching allocator): a CUDA graph
    of a small block (depthwise, pointwise + ReLU, dilated conv, max pooling, dropout with a fixed seed),
    captured after warm-up and replayed on new inputs, writes what the same eager calls compute (the same
    kernels and configurations, so exactly)."""
    wd, wp, w = (rand(*shape, dtype=torch.float16) for shape in ((16, 1, 3, 3), (32, 16, 1, 1), (32, 32, 3, 3)))

    def block(x):
        y = tc.pointwise_conv2d(tc.depthwise_conv2d(x, wd, padding=1), wp, activation="relu")
        return tc.dropout(tc.max_pool2d(tc.conv2d(y, w, padding=2, dilation=2), 2), 0.5, seed=3)

    static_x = rand(2, 16, 14, 14, dtype=torch.float16, channels_last=True)
    replay, static_y = host.graphed(lambda: block(static_x))
    for _ in range(2):
        x = rand(2, 16, 14, 14, dtype=torch.float16, channels_last=True)
        static_x.copy_(x)
        replay()
        expected = block(x)
        assert not expected.isnan().any()
        assert torch.equal(static_y, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_replays_a_training_step():
    """Backward passes run plans too (eager, no create_graph): a graphed forward and backward of a small
    block (torch.cuda.make_graphed_callables: warm-up, capture, replay) gives the gradients the same eager
    step gives, so the backward plans' launches and workspaces are capturable."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(tc.nn.Conv2d(16, 32, 3, padding=2, dilation=2),
                                tc.nn.DepthwiseSeparableConv2d(32, 32, 3, padding=1), tc.nn.MaxPool2d(2)).cuda()
    x = rand(2, 16, 14, 14, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(block, (x,))
    for _ in range(2):
        x = rand(2, 16, 14, 14, requires_grad=True)
        dy = rand(2, 32, 7, 7)
        grads = torch.autograd.grad(graphed(x), (x, *block.parameters()), dy)
        expected = torch.autograd.grad(block(x), (x, *block.parameters()), dy)
        for got, want in zip(grads, expected):
            assert not want.isnan().any()
            assert_close(got, want, torch.float32, "graphed training step")


@pytest.mark.parametrize("strict", [False, True])
def test_export_sees_the_custom_ops(strict):
    """torch.export traces the custom ops, not the plans' launches."""
    class Block(torch.nn.Module):
        def forward(self, x, w):
            return tc.max_pool2d(tc.conv2d(x, w, padding=1), 2)

    program = torch.export.export(Block(), (rand(1, 2, 6, 6), rand(3, 2, 3, 3)), strict=strict)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"tritonconv.conv2d.default", "tritonconv.max_pool2d.default"} <= targets, targets


def test_tuning_runs_the_launchers_run_functions(stubbed, monkeypatch):
    """Autotuning launches a launcher's run function per candidate on the call's tensors, comparing the
    first output of those that return several (y and the pre-activation, y and the winning taps)."""
    monkeypatch.setattr(dispatch, "TIMER", lambda fn: 1.0)
    tc.set_autotune(True)
    x = torch.empty(2, 8, 9, 9, requires_grad=True)
    with dispatch.recording() as decisions:
        tc.pointwise_conv2d(x, torch.empty(4, 8, 1, 1), activation="relu")
        tc.depthwise_conv2d(x, torch.empty(8, 1, 3, 3))
        tc.max_pool2d(x, 2)
        tc.dropout(x, 0.5)
    assert [d.source for d in decisions] == ["tuned"] * 4
