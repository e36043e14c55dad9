"""The dispatch seam: heuristics, pruning, the tuner (with a fake timer), the persistent cache, explain,
tune and the cache CLI."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

import dispatch_fakes as fakes
import tritonconv as tc
from conftest import rand, run_samples
from tritonconv import _cache, _checks, dispatch, heuristics

TESTS = Path(__file__).parent


@pytest.fixture
def gpu_mode(monkeypatch, tmp_path):
    """Decide as on a GPU (the interpreter always takes the heuristic), with an empty cache in tmp_path
    and the fake timer; returns the timer's table of times per config."""
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path))
    times = {fakes.FASTEST: 0.5, fakes.WRONG: 0.1, fakes.HEURISTIC: 2.0}
    timer = fakes.timer_for(times)
    monkeypatch.setattr(dispatch, "TIMER", timer)
    dispatch.set_autotune(True)
    dispatch.forget()
    with _checks.running_as(_checks.Mode.GPU):
        yield timer
    dispatch.set_autotune(None)
    dispatch.forget()


def test_interpreter_gets_the_heuristic_only():
    decision = dispatch.decide(fakes.PROBLEM, fakes.launch)
    assert decision.source == "heuristic" and decision.config == fakes.HEURISTIC


def test_tuner_picks_fastest_correct_config_and_persists(gpu_mode, tmp_path):
    decision = dispatch.decide(fakes.PROBLEM, fakes.launch)
    assert decision.source == "tuned"
    assert decision.config == fakes.FASTEST, "WRONG is faster but computes something else"
    assert fakes.WRONG not in gpu_mode.timed
    entries = json.loads((tmp_path / _cache.FILE_NAME).read_text())["entries"]
    assert [dispatch.Config.from_json(e["config"]) for e in entries.values()] == [fakes.FASTEST]
    # The same process remembers; the timer is not called again.
    timed = len(gpu_mode.timed)
    assert dispatch.decide(fakes.PROBLEM, fakes.launch).config == fakes.FASTEST
    assert len(gpu_mode.timed) == timed


def test_new_process_reuses_cache_without_timing(gpu_mode, tmp_path):
    dispatch.decide(fakes.PROBLEM, fakes.launch)
    script = (
        "import json, dispatch_fakes as f\n"
        "from tritonconv import _checks, dispatch\n"
        "def no_timer(fn): raise AssertionError('timed')\n"
        "dispatch.TIMER = no_timer\n"
        "with _checks.running_as(_checks.Mode.GPU):\n"
        "    d = dispatch.decide(f.PROBLEM, f.launch)\n"
        "print(json.dumps([d.source, d.config == f.FASTEST]))\n")
    env = {**os.environ, "TRITONCONV_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(TESTS), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["cache", True]


def test_changed_kernel_source_invalidates(gpu_mode, monkeypatch):
    dispatch.decide(fakes.PROBLEM, fakes.launch)
    timed = len(gpu_mode.timed)
    dispatch.forget()
    monkeypatch.setattr(dispatch, "_source_hash", lambda fn: "edited")
    decision = dispatch.decide(fakes.PROBLEM, fakes.launch)
    assert decision.source == "tuned" and len(gpu_mode.timed) > timed


def test_batch_bucket_shares_entry_but_other_dtype_does_not(gpu_mode):
    dispatch.decide(fakes.PROBLEM, fakes.launch)
    similar = dispatch.Problem(fakes.KERNEL, m=3000, n=64, k=256, dtype=torch.float16)
    assert dispatch.decide(similar, fakes.launch).source == "cache"
    other = dispatch.Problem(fakes.KERNEL, m=4096, n=64, k=256, dtype=torch.bfloat16)
    assert dispatch.decide(other, fakes.launch).source == "tuned"


def test_tuning_budget_keeps_the_heuristics_neighbourhood(gpu_mode, monkeypatch):
    space = fakes.space(fakes.PROBLEM)
    near = dispatch.nearest(fakes.HEURISTIC, space, 4)
    assert near[0] == fakes.HEURISTIC and len(near) == 4
    differing = lambda c: sum(a != b for a, b in zip(c.meta, fakes.HEURISTIC.meta)) + (c.num_warps != 4) + (c.num_stages != 3)  # noqa: E731
    assert max(differing(c) for c in near) <= min(differing(c) for c in space if c not in near)
    monkeypatch.setenv("TRITONCONV_TUNE_CONFIGS", "3")
    dispatch.decide(fakes.PROBLEM, fakes.launch)
    assert len(gpu_mode.timed) <= 3


def test_tuning_off_uses_heuristic(gpu_mode):
    tc.set_autotune(False)
    decision = dispatch.decide(fakes.PROBLEM, fakes.launch)
    assert decision.source == "heuristic" and gpu_mode.timed == []
    with dispatch.tuning(True):
        assert dispatch.decide(fakes.PROBLEM, fakes.launch).source == "tuned"


def test_prune():
    problem = dispatch.Problem(fakes.KERNEL, m=20, n=40, k=3000, batch=1, dtype=torch.float16)
    configs = dispatch.product_space(num_warps=(4,), num_stages=(3,), BLOCK_M=(16, 32, 64, 128),
                                     BLOCK_N=(64, 128, 256), BLOCK_K=(32, 64), SPLIT_K=(1, 64, 128))
    kept = dispatch.prune(problem, configs)
    assert kept and all(c["BLOCK_M"] <= 64 and c["BLOCK_N"] <= 128 for c in kept)
    assert all(c["SPLIT_K"] <= 3000 // c["BLOCK_K"] + 1 for c in kept)
    big = dispatch.Config.of(num_warps=8, num_stages=8, BLOCK_M=256, BLOCK_N=256, BLOCK_K=128)
    assert dispatch.smem_bytes(big, torch.float16) > heuristics.SMEM_PER_BLOCK
    assert dispatch.prune(dispatch.Problem(fakes.KERNEL, m=10**6, n=256, k=256, dtype=torch.float16), [big]) == []
    # Too few programs: when some config fills the GPU, one that fills under a quarter of it goes.
    wide = dispatch.Problem(fakes.KERNEL, m=128 * 132, n=64, k=64, dtype=torch.float16)
    few = dispatch.Config.of(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, SPLIT_K=1)
    assert dispatch.prune(wide, [few]) == [few]
    small = dispatch.Problem(fakes.KERNEL, m=128 * 20, n=64, k=4096, dtype=torch.float16)
    many = dispatch.Config.of(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, SPLIT_K=16)
    assert dispatch.prune(small, [few, many]) == [many]
    assert fakes.WRONG not in dispatch.prune(fakes.PROBLEM, fakes.space(fakes.PROBLEM), frozenset({fakes.WRONG}))


@pytest.fixture(scope="module")
def recorded_problems():
    """The Problem of every kernel launch that the public ops' samples (conftest.op_sample) make on tiny
    inputs, forward and backward."""
    with dispatch.recording() as decisions:
        run_samples()
    return {d.problem.kernel: d.problem for d in decisions}


LIBRARY_KERNELS = [k for k in dispatch.kernels() if k != fakes.KERNEL]


def test_every_kernel_is_reached_by_an_op(recorded_problems):
    assert set(LIBRARY_KERNELS) <= set(recorded_problems)


def _assert_valid(config: dispatch.Config, problem: dispatch.Problem) -> None:
    assert config.num_warps in (1, 2, 4, 8, 16) and config.num_stages >= 1
    assert all(v >= 1 for _, v in config.meta)
    assert dispatch.smem_bytes(config, problem.dtype) <= heuristics.SMEM_PER_BLOCK
    assert dispatch.programs(config, problem) >= 1


@pytest.mark.parametrize("kernel", LIBRARY_KERNELS)
def test_heuristics_valid_on_real_problems(kernel, recorded_problems):
    for dtype in (torch.float32, torch.bfloat16):
        problem = dataclasses.replace(recorded_problems[kernel], dtype=dtype)
        for interpreter in (False, True):
            _assert_valid(dispatch.spec(kernel).heuristic(problem, interpreter), problem)


@pytest.mark.parametrize("kernel", [k for k in LIBRARY_KERNELS if dispatch.spec(k).family == "implicit_gemm"])
@pytest.mark.parametrize("size", ["tiny", "huge"])
def test_gemm_heuristics_on_tiny_and_huge(kernel, size):
    m, n, k = (1, 1, 1) if size == "tiny" else (2**24, 4096, 2**20)
    problem = dispatch.Problem(kernel, m=m, n=n, k=k, batch=9, dtype=torch.float16)
    for interpreter in (False, True):
        config = dispatch.spec(kernel).heuristic(problem, interpreter)
        _assert_valid(config, problem)
        blocks = [v for name, v in config.meta if name.startswith("BLOCK")]
        assert min(blocks) >= 16 and all(v & (v - 1) == 0 for v in blocks), f"tl.dot needs power-of-2 blocks >= 16: {config}"
        if not interpreter and size == "huge":
            assert dispatch.programs(config, problem) >= heuristics.SM_COUNT


def test_cache_concurrent_writers(tmp_path):
    """Four processes with four threads each write 10 entries at once: every entry survives."""
    script = (
        "import sys, threading\n"
        "from tritonconv._cache import ConfigCache\n"
        "cache = ConfigCache()\n"
        "def work(t):\n"
        "    for i in range(10): cache.put(f'{sys.argv[1]}-{t}-{i}', {'v': i})\n"
        "threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n")
    env = {**os.environ, "TRITONCONV_CACHE_DIR": str(tmp_path), "TRITON_INTERPRET": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)], env=env) for p in range(4)]
    assert all(p.wait() == 0 for p in procs)
    entries = json.loads((tmp_path / _cache.FILE_NAME).read_text())["entries"]
    assert len(entries) == 4 * 4 * 10


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 999, "entries": {}})])
def test_corrupt_or_foreign_cache_warns_once_and_rebuilds(tmp_path, monkeypatch, content):
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path))
    (tmp_path / _cache.FILE_NAME).write_text(content)
    cache = _cache.ConfigCache()
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        assert cache.get("k") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.put("k", {"v": 1})
    assert _cache.ConfigCache().get("k") == {"v": 1}


def test_threads_share_one_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path))
    cache = _cache.ConfigCache()
    threads = [threading.Thread(target=lambda i=i: cache.put(f"k{i}", {"v": i})) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(_cache.ConfigCache().entries()) == 16


def test_explain_names_family_config_and_source():
    x, w = rand(1, 3, 9, 9), rand(4, 3, 3, 3)
    info = tc.explain(tc.conv2d, x, w, padding=2, dilation=2)
    assert info["family"] == "implicit_gemm"
    [launch] = info["launches"]
    assert launch["kernel"] == "conv2d_forward" and launch["source"].startswith("heuristic")
    assert "BLOCK_M=" in launch["config"]
    text = str(info)
    assert "conv2d_forward" in text and "implicit_gemm" in text and "heuristic" in text
    assert tc.explain("conv2d", x, w)["launches"][0]["kernel"] == "conv2d_forward"


def test_tune_lists_every_kernel_of_forward_and_backward():
    x = rand(2, 3, 7, 7, requires_grad=True)
    w = rand(5, 3, 3, 3, requires_grad=True)
    with pytest.warns(UserWarning, match="nothing was tuned: Triton's interpreter"):
        table = tc.tune(lambda a: tc.conv2d(a, w, padding=1), x)
    # The tests run under deterministic algorithms: the weight gradient's two splits are added by split_sum.
    assert set(table["kernel"]) == {"conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "split_sum"}
    assert list(table.columns) == ["kernel", "family", "shape", "config", "source", "time_ms", "tune_seconds"]
    assert (table["source"] == "heuristic").all() and "cannot time kernels" in table.attrs["note"]
    with pytest.warns(UserWarning, match="ran no tritonconv kernel"):
        tc.tune(torch.nn.Conv2d(3, 5, 3), x)


def test_backend_argument():
    x, w = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        tc.conv2d(x, w, backend="cudnn")
    with pytest.raises(ValueError, match="backend must be one of"):
        tc.set_backend("fast")
    tc.set_backend("auto")
    try:
        # In the interpreter "auto" still runs ours (PyTorch's op would not be timed there), and says so.
        info = tc.explain(tc.conv2d, x, w, backend="auto")
        assert info["family"] == "implicit_gemm"
        assert "interpreter (no GPU) cannot time, so it runs ours" in info["backend"] and "backend:" in str(info)
        assert tc.explain(tc.conv2d, x, w)["backend"].startswith("tritonconv's kernels: backend \"auto\"")
    finally:
        tc.set_backend("triton")


def test_backend_auto_picks_torch_when_faster(gpu_mode, monkeypatch):
    times = iter([3.0, 1.0])  # ours, then torch's
    monkeypatch.setattr(dispatch, "TIMER", lambda fn: next(times))
    ran = []
    problem = fakes.PROBLEM
    assert dispatch.use_torch(problem, lambda: ran.append("ours"), lambda: ran.append("torch"), "auto")
    assert dispatch.use_torch(problem, lambda: None, lambda: None, "auto"), "remembered"
    assert not dispatch.use_torch(problem, lambda: None, lambda: None, "triton")


def test_cache_cli(tmp_path):
    env = {**os.environ, "TRITONCONV_CACHE_DIR": str(tmp_path), "TRITON_INTERPRET": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "tritonconv", "cache", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout
    assert run("path").strip() == str(tmp_path / _cache.FILE_NAME)
    cache_env = dict(os.environ, TRITONCONV_CACHE_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", "from tritonconv._cache import ConfigCache; ConfigCache().put('k', "
                    "{'kernel': 'conv2d_forward', 'shape': 'm<=64', 'device': 'H200|sm90', 'time_ms': 0.01, "
                    "'config': {'meta': {'BLOCK_M': 64}, 'num_warps': 4, 'num_stages': 3}})"], env=cache_env, check=True)
    listing = run("list")
    assert "1 entries" in listing and "conv2d_forward" in listing and "BLOCK_M=64" in listing
    # Damaged entries (the file is user-writable) are listed as such, not a traceback.
    subprocess.run([sys.executable, "-c", "from tritonconv._cache import ConfigCache; c = ConfigCache(); "
                    "c.put('a', 'not an entry'); c.put('b', {'kernel': 'conv2d_forward'}); "
                    "c.put('c', {'config': {'meta': 3}})"], env=cache_env, check=True)
    listing = run("list")
    assert "4 entries" in listing and listing.count("damaged entry") == 3, listing
    assert "removed 4" in run("clear")
    assert "0 entries" in run("list")

