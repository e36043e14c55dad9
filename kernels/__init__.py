"""Triton kernels of tritonconv (only `@triton.jit` code). Installed as `tritonconv.kernels`."""
