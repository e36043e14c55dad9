"""tritonconv.analysis: receptive fields of conv stacks and the cost of one convolution three ways."""

import pytest

from tritonconv.analysis import conv_cost, receptive_field


def test_receptive_field_of_plain_dilated_and_strided_stacks():
    assert receptive_field([3, 3, 3]) == 7
    assert receptive_field([3, 3, 3], dilations=[1, 2, 4]) == 15
    assert receptive_field([7, 3, 3], strides=[2, 1, 1]) == 7 + 2 * 2 + 2 * 2
    with pytest.raises(ValueError, match="one entry per layer"):
        receptive_field([3, 3], dilations=[1])


def test_conv_cost_standard_separable_factorized():
    # 3x3 from 64 to 128 channels on a 56x56 map.
    standard = conv_cost(64, 128, 3, 56, 56)
    assert standard.params == 9 * 64 * 128 and standard.macs == standard.params * 56 * 56
    separable = conv_cost(64, 128, 3, 56, 56, separable=True)
    assert separable.params == 9 * 64 + 64 * 128
    assert separable.params / standard.params == pytest.approx(1 / 128 + 1 / 9)
    factorized = conv_cost(64, 64, 3, 56, 56, factorized=True)
    assert factorized.params == 3 * 64 * 64 * 2 and factorized.macs == factorized.params * 56 * 56
    assert factorized.params / conv_cost(64, 64, 3, 56, 56).params == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at most one"):
        conv_cost(64, 64, 3, 56, 56, separable=True, factorized=True)
