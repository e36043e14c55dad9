"""A fake kernel for the tuner tests: registered with the dispatcher, "launched" on the CPU, timed by an
injected timer. Imported by tests/test_dispatch.py and by the subprocesses it starts."""

import torch

from tritonconv import dispatch

KERNEL = "fake_gemm"
PROBLEM = dispatch.Problem(KERNEL, m=4096, n=64, k=256, dtype=torch.float16)
HEURISTIC = dispatch.Config.of(num_warps=4, num_stages=3, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
FASTEST = dispatch.Config.of(num_warps=8, num_stages=3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64)
WRONG = dispatch.Config.of(num_warps=4, num_stages=4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64)


def fake_gemm_kernel():
    """Stands in for a @triton.jit function: only its source file's hash matters to the cache."""


def space(problem):
    return dispatch.product_space(num_warps=(4, 8), num_stages=(3, 4), BLOCK_M=(64, 128), BLOCK_N=(64,),
                                  BLOCK_K=(32, 64))


dispatch.register(KERNEL, "test", fake_gemm_kernel, lambda problem, interpreter: HEURISTIC, space)

EXPECTED = torch.arange(12, dtype=torch.float32).reshape(3, 4)


def launch(config):
    """The right answer for every config but WRONG, which the tuner must reject though it is fastest."""
    return EXPECTED + 100 if config == WRONG else EXPECTED.clone()


def timer_for(times):
    """A timer that reads each config's time from `times` and logs what it timed."""
    timed = []

    def timer(fn):
        config = fn.__defaults__[0]
        timed.append(config)
        return times.get(config, 1.0)

    timer.timed = timed
    return timer
