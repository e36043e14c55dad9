"""tritonconv: Triton kernels for dilated, depthwise-separable and dropout-regularised convolution."""

from tritonconv import analysis
from tritonconv.conv import conv2d

__all__ = ["analysis", "conv2d"]
__version__ = "0.1.0"
