"""tritonconv: Triton kernels for dilated, depthwise-separable and dropout-regularised convolution."""

from tritonconv import analysis
from tritonconv.conv import conv2d
from tritonconv.depthwise import depthwise_conv2d
from tritonconv.dispatch import get_autotune, get_backend, set_autotune, set_backend
from tritonconv.dropout import cutout2d, drop_block2d, dropout, spatial_dropout2d
from tritonconv.pointwise import pointwise_conv2d
from tritonconv.pooling import max_pool2d, max_pool2d_dropout
from tritonconv.separable import depthwise_separable_conv2d
from tritonconv.tuning import explain, tune

from tritonconv import nn  # noqa: E402 (its modules call the ops above)
from tritonconv.conversion import convert  # noqa: E402

__all__ = ["analysis", "conv2d", "convert", "cutout2d", "depthwise_conv2d", "depthwise_separable_conv2d", "drop_block2d",
           "dropout", "explain", "get_autotune", "get_backend", "max_pool2d", "max_pool2d_dropout", "nn",
           "pointwise_conv2d", "set_autotune", "set_backend", "spatial_dropout2d", "tune"]
__version__ = "0.1.0"
