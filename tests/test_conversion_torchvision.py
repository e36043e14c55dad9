"""convert on torchvision's own models (random weights, nothing downloaded): every eval-mode conv -> BN
folded, every fusable depthwise -> 1x1 fused, the rest reported with reasons, and the converted model
matching the float64 original. Batch 1 at 32x32 keeps each model at 10-40 s in Triton's interpreter.

Needs torchvision (`pip install torch==2.14.1 torchvision==0.29.1`, see README); skipped without it.
"""

import copy
import re

import pytest
import torch

from conftest import DEVICE, assert_close, rand

tv = pytest.importorskip("torchvision", reason="torchvision is not installed: these tests convert its models "
                                               "(pip install torch==2.14.1 torchvision==0.29.1)")

import tritonconv as tc  # noqa: E402 (after the skip)
from tritonconv.testing import randomise_batchnorm  # noqa: E402


def converted(name: str):
    """torchvision model `name` with random weights and BatchNorm statistics, in eval mode, converted with
    fold_batchnorm and fuse_separable and checked against its float64 original; returns the report."""
    torch.manual_seed(0)
    model = randomise_batchnorm(getattr(tv.models, name)()).to(DEVICE).eval()
    x = rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double())
        model = tc.convert(model, fold_batchnorm=True, fuse_separable=True)
        assert_close(model(x), expected, torch.float32, f"converted {name}")
    return model.tritonconv_report


def test_mobilenet_v2_fuses_every_inverted_residual():
    report = converted("mobilenet_v2")
    assert len(report.fused) == 17 and report.not_fused == []
    assert len(report.folded) == 52 and report.not_folded == []


def test_resnet18_folds_every_batchnorm_and_none_in_training_mode():
    report = converted("resnet18")
    assert len(report.folded) == 20 and report.not_folded == []
    assert ("layer1.0.bn1", "layer1.0.conv1") in report.folded
    report = tc.convert(tv.models.resnet18().train(), fold_batchnorm=True).tritonconv_report
    assert report.folded == [] and len(report.not_folded) == 20
    assert all("training mode" in why for _, why in report.not_folded)
    assert any("model is in training mode" in note for note in report.notes)


def _squeeze_excitation(dw: str) -> str:
    """The SE block torchvision puts right after the depthwise conv's Conv2dNormActivation: `...block.1.0`
    is followed by `...block.2`."""
    block, index = re.fullmatch(r"(.*\.block)\.(\d+)\.0", dw).groups()
    return f"SqueezeExcitation {block}.{int(index) + 1}"


def test_efficientnet_b0_names_the_squeeze_excitation_in_every_block():
    report = converted("efficientnet_b0")
    assert report.fused == [] and len(report.not_fused) == 16
    for dw, why in report.not_fused:
        assert _squeeze_excitation(dw) in why, why
    assert len(report.folded) == 49 and report.not_folded == []


def test_mobilenet_v3_large_fuses_plain_relu_blocks_and_names_what_stops_the_rest():
    report = converted("mobilenet_v3_large")
    assert [dw for dw, _ in report.fused] == ["features.1.block.0.0", "features.2.block.1.0", "features.3.block.1.0"]
    reasons = dict(report.not_fused)
    se_blocks = [f"features.{i}.block.1.0" for i in (4, 5, 6, 11, 12, 13, 14, 15)]
    assert all(_squeeze_excitation(dw) in reasons[dw] for dw in se_blocks), reasons
    assert all("Hardswish" in reasons[f"features.{i}.block.1.0"] for i in range(7, 16))
    assert len(reasons) == 12 and report.not_folded == []


def test_convnext_tiny_reports_layernorm_and_linear():
    report = converted("convnext_tiny")
    assert report.fused == [] and len(report.not_fused) == 18
    assert all("LayerNorm" in why and "Linear" in why for _, why in report.not_fused)
    assert report.folded == report.not_folded == []
