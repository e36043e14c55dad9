"""tritonconv: Triton kernels for dilated, depthwise-separable and dropout-regularised convolution."""

from tritonconv import analysis
from tritonconv.conv import conv2d
from tritonconv.dispatch import get_backend, set_backend
from tritonconv.tuning import explain, tune

__all__ = ["analysis", "conv2d", "explain", "get_backend", "set_backend", "tune"]
__version__ = "0.1.0"
