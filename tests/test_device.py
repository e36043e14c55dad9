"""The right GPU: every launch runs with its tensors' device current and caches for that device's GPU;
tensors on different devices are rejected. On a machine with several GPUs the ops also run for real on
the last one while the current device is the first."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import DEVICE, assert_close, rand, run_samples
from tritonconv import _plans, dispatch


def test_every_launch_runs_under_its_tensors_device(monkeypatch):
    """Each kernel's configuration is asked for (so it is launched) inside the device guard, entered
    with the device of the launcher's tensors."""
    entered, asked = [], []

    @contextlib.contextmanager
    def recording_context(device):
        entered.append(device)
        yield

    config_for = dispatch.config_for

    def checked_config_for(problem, launch=None):
        asked.append((problem.kernel, dispatch._LAUNCH_DEVICE.get()))
        return config_for(problem, launch)

    monkeypatch.setattr(dispatch, "device_context", recording_context)
    monkeypatch.setattr(dispatch, "config_for", checked_config_for)
    dispatch.forget()  # plans kept by earlier tests would skip the launchers and their decisions
    run_samples()
    kernels = {kernel for kernel, _ in asked}
    assert kernels >= {k for k in dispatch.kernels() if dispatch.spec(k).family != "test"}
    assert all(device == torch.device(DEVICE) for _, device in asked), "config asked for outside the guard"
    assert set(entered) == {torch.device(DEVICE)}
    # Eager calls launch through plans: each plan that launches our kernels enters its tensors' device.
    plans = [p for v in _plans._PLANS.values() for p in (v if isinstance(v, tuple) else (v,))
             if isinstance(p, _plans.Plan) and p.autograd is not None]
    assert plans and all(p.device == torch.device(DEVICE) for p in plans)


def test_a_plan_runs_under_its_device(monkeypatch):
    """Simulated two-GPU machine: a plan for cuda:1 runs (forward, and its autograd's setup) with cuda:1
    current when cuda:0 is, and enters nothing when cuda:1 already is."""
    current, entered = [0], []

    @contextlib.contextmanager
    def device(index):
        entered.append(index)
        saved, current[0] = current[0], index
        yield
        current[0] = saved

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    ran_on = []
    plan = _plans.Plan(lambda x: ran_on.append(current[0]) or x, device=torch.device("cuda", 1))
    x = torch.ones(2)
    assert plan(False, x) is x
    assert (ran_on, entered, current[0]) == ([1], [1], 0)
    current[0] = 1
    plan(False, x)
    assert (ran_on, entered) == ([1, 1], [1])
    assert _plans.Plan(lambda x: x, device=torch.device("cpu"))._cuda is None


def test_mixed_devices_are_rejected():
    x = rand(1, 2, 5, 5)
    geo = tc.conv.conv_geometry(x, rand(3, 2, 3, 3), None, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d_forward got tensors on \['cpu', 'meta'\]"):
        tc.conv.conv2d_forward(x, torch.empty(3, 2, 3, 3, device="meta"), None, geo)
    with pytest.raises(ValueError, match="weight is on meta"):
        tc.conv2d(x, torch.empty(3, 2, 3, 3, device="meta"))
    with pytest.raises(ValueError, match="every tensor of one call must be on one device"):
        tc.pooling.pool_backward(rand(1, 2, 3, 3), torch.empty(1, 2, 3, 3, dtype=torch.uint8, device="meta"),
                                 tc.pooling.pool_geometry(x, 2, 2, 0, 1, False), 0, 0.0, False)


def test_cache_key_names_the_tensors_gpu_not_the_current_one(monkeypatch):
    """Simulated two-GPU machine whose current device is 0: a launch on cuda:1 keys its cache entry by
    GPU 1's name and capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["H200", "A100"][i])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(9, 0), (8, 0)][i])
    monkeypatch.setattr(dispatch, "_DEVICE_TAGS", {})
    monkeypatch.setattr(dispatch, "device_context", lambda device: contextlib.nullcontext())
    problem = dispatch.Problem("conv2d_forward", m=64, n=8, k=27)
    assert "|H200|sm90|" in dispatch.cache_key(problem)
    with dispatch.launch_device(torch.device("cuda", 1)):
        assert "|A100|sm80|" in dispatch.cache_key(problem)


def test_runs_on_the_last_device():
    """With several GPUs: the ops on the last GPU while the current device is the first (without the
    guard Triton would launch on GPU 0 with pointers into GPU N-1). With one device: the same checks
    there (bench/gpu_check.sh says which ran)."""
    count = torch.cuda.device_count()
    device = torch.device("cuda", count - 1) if count > 1 else torch.device(DEVICE)
    if count > 1:
        torch.cuda.set_device(0)
    x = rand(2, 4, 7, 6).to(device).requires_grad_()
    w = rand(5, 4, 3, 3).to(device).requires_grad_()
    y = tc.conv2d(x, w, padding=1, dilation=2)
    xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
    ref = F.conv2d(xr, wr, padding=1, dilation=2)
    assert y.device == device
    assert_close(y, ref, torch.float32, "forward")
    y.backward(torch.ones_like(y))
    ref.backward(torch.ones_like(ref))
    assert_close(x.grad, xr.grad, torch.float32, "input grad")
    assert_close(w.grad, wr.grad, torch.float32, "weight grad")
