"""A damaged entry of the persistent cache never breaks an op: every entry read is checked against the
kernel's registered meta-parameters, and a bad one is dropped with one warning naming its key."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import tritonconv as tc
from conftest import assert_close, rand
from tritonconv import dispatch


@pytest.fixture
def gpu_path(monkeypatch, tmp_path):
    """Decide as on a GPU (cache, then the GPU heuristic: tuning off), with an empty cache in tmp_path;
    the kernels still run in the interpreter, with the GPU heuristic's configuration."""
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setenv("TRITONCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dispatch, "_DROPPED", set())
    dispatch.set_autotune(False)  # the setting is read once, so not through TRITONCONV_AUTOTUNE
    dispatch.forget()
    yield
    dispatch.set_autotune(None)
    dispatch.forget()


def _conv_problem(x, w):
    with dispatch.recording() as decisions:
        tc.conv2d(x, w, padding=1)
    [decision] = decisions
    return decision.problem


GOOD = {"meta": {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 8}, "num_warps": 4, "num_stages": 3}


@pytest.mark.parametrize("entry,reason", [
    ({"config": {**GOOD, "meta": {**GOOD["meta"], "BLOCK_M": 3}}}, "BLOCK_M=3 is not a power of two"),
    ({"kernel": "conv2d_forward", "time_ms": 0.1}, "no config"),
    ({"config": {**GOOD, "meta": {**GOOD["meta"], "BLOCK_M": 4096}}}, "BLOCK_M=4096 is outside"),
    ({"config": {**GOOD, "meta": {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}}}, "meta-parameters"),
    ({"config": {**GOOD, "meta": {**GOOD["meta"], "SPLIT_K": 2}}}, "meta-parameters"),
    ({"config": {**GOOD, "meta": {**GOOD["meta"], "BLOCK_N": "64"}}}, "is not an int"),
    ({"config": {**GOOD, "num_warps": 3}}, "num_warps=3"),
    ({"config": {**GOOD, "num_stages": 0}}, "num_stages=0"),
    ({"config": {"meta": GOOD["meta"]}}, "num_warps=None"),
    (["not", "a", "dict"], "no config"),
])
def test_damaged_entry_is_dropped_with_one_warning(gpu_path, entry, reason):
    x, w = rand(1, 3, 9, 8), rand(5, 3, 3, 3)
    problem = _conv_problem(x, w)
    key = dispatch.cache_key(problem)
    dispatch.CACHE.put(key, entry)
    dispatch.forget()
    with pytest.warns(RuntimeWarning, match=reason) as record:
        y = tc.conv2d(x, w, padding=1)
    assert [str(r.message).count(key) for r in record if r.category is RuntimeWarning] == [1]
    assert_close(y, F.conv2d(x.double(), w.double(), padding=1), torch.float32, "heuristic's result")
    [decision] = tc.explain(tc.conv2d, x, w, padding=1)["launches"]
    assert decision["source"] == "heuristic"
    dispatch.forget()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tc.conv2d(x, w, padding=1)  # one warning per key and process


def test_valid_entry_is_used(gpu_path):
    x, w = rand(1, 3, 9, 8), rand(5, 3, 3, 3)
    key = dispatch.cache_key(_conv_problem(x, w))
    dispatch.CACHE.put(key, {"config": GOOD, "time_ms": 0.1})
    dispatch.forget()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [launch] = tc.explain(tc.conv2d, x, w, padding=1)["launches"]
    assert launch["source"] == "cache" and "BLOCK_M=64" in launch["config"]


def test_damaged_entry_is_tuned_again(gpu_path, monkeypatch):
    """With tuning on, the bad entry is replaced by a freshly tuned one (one candidate, fake timer)."""
    dispatch.set_autotune(True)
    monkeypatch.setenv("TRITONCONV_TUNE_CONFIGS", "1")
    monkeypatch.setattr(dispatch, "TIMER", lambda fn: 1.0)
    x, w = rand(1, 3, 9, 8), rand(5, 3, 3, 3)
    key = dispatch.cache_key(_conv_problem(x, w))
    dispatch.CACHE.put(key, {"config": {**GOOD, "meta": {**GOOD["meta"], "BLOCK_M": 3}}})
    dispatch.forget()
    with pytest.warns(RuntimeWarning, match="tuning it again"):
        tc.conv2d(x, w, padding=1)
    assert dispatch.check_entry(_conv_problem(x, w), dispatch.CACHE.get(key)) is not None


def test_limits_come_from_each_kernels_space():
    """Depthwise TAPS_W takes 3 (not a power of two) and the pooling tiles their own ranges."""
    depthwise = dispatch.Problem("depthwise_weight_grad", m=2 * 9 * 9, n=8, k=9, extra=(
        ("height", 9), ("width", 9), ("kernel_h", 3), ("kernel_w", 3), ("stride_w", 1)))
    ok = {"meta": {"BLOCK_C": 2, "BLOCK_H": 8, "BLOCK_W": 16, "OUT_W": 1, "SPLIT_K": 4, "TAPS_H": 3, "TAPS_W": 3},
          "num_warps": 4, "num_stages": 1}
    assert dispatch.check_entry(depthwise, {"config": ok})["TAPS_W"] == 3
    with pytest.raises(ValueError, match="BLOCK_W=24 is not a power of two"):
        dispatch.check_entry(depthwise, {"config": {**ok, "meta": {**ok["meta"], "BLOCK_W": 24}}})
    pool = dispatch.Problem("max_pool2d_forward", m=3, n=49, k=4,
                            extra=(("mode", 0), ("pairs", False), ("cell", 0), ("taps", 0)))
    with pytest.raises(ValueError, match="BLOCK_C=512 is outside"):
        dispatch.check_entry(pool, {"config": {"meta": {"BLOCK_C": 512, "BLOCK_P": 8}, "num_warps": 4,
                                               "num_stages": 1}})


def test_damaged_backend_entry(gpu_path):
    import dispatch_fakes as fakes

    key = "backend|" + dispatch.cache_key(fakes.PROBLEM)
    dispatch.CACHE.put(key, {"time_ms": 1.0})
    with pytest.warns(RuntimeWarning, match="backend is not one of"):
        assert not dispatch.use_torch(fakes.PROBLEM, lambda: None, lambda: None, "auto")


def test_an_entry_may_hold_a_parameter_only_tuning_candidates_set():
    """A tuned conv forward may keep its TMA candidate (B_DESCRIPTOR=1, which the heuristic never sets);
    the parameter then takes only the values the space gives it."""
    problem = dispatch.Problem("conv2d_forward", m=16 * 65 * 65, n=256, k=256 * 9, dtype=torch.float16,
                               channels_last=True, extra=(("taps", 9),))
    tma = {**GOOD, "meta": {**GOOD["meta"], "BLOCK_N": 128, "B_DESCRIPTOR": 1}}
    assert dispatch.check_entry(problem, {"config": tma})["B_DESCRIPTOR"] == 1
    with pytest.raises(ValueError, match="B_DESCRIPTOR=0 is not"):
        dispatch.check_entry(problem, {"config": {**tma, "meta": {**tma["meta"], "B_DESCRIPTOR": 0}}})
    with pytest.raises(ValueError, match="are not the kernel's"):
        dispatch.check_entry(problem, {"config": {**tma, "meta": {**tma["meta"], "B_TMA": 1}}})
