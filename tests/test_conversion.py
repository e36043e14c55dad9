"""convert's dataflow matching on small hand-built models (no torchvision needed): BatchNorm folding and
depthwise -> 1x1 fusion found through torch.fx, through nn.Sequential structure where a forward does not
trace, and every fold or fusion left undone reported with its reason."""

import copy

import torch
from torch import nn

import tritonconv as tc
from tritonconv.testing import randomise_batchnorm
from conftest import DEVICE, assert_close, rand


class BasicBlock(nn.Module):
    """ResNet's BasicBlock: convs and BatchNorms called in forward (no Sequential), one ReLU used twice,
    a downsampling shortcut."""

    def __init__(self, c_in: int = 4, c_out: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: a Sequential subclass, so the 1x1 conv after a depthwise one is
    its parent's next child, not its sibling."""

    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6) -> None:
        layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        super().__init__(*layers, *([act()] if act else []))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3 (each a ConvBNAct), project 1x1 + BN, residual add;
    with `se`, a squeeze-excitation between the depthwise and the projection (EfficientNet)."""

    def __init__(self, c: int = 4, expand: int = 2, act: type[nn.Module] = nn.ReLU6, se: bool = False) -> None:
        super().__init__()
        hidden = c * expand
        layers = [ConvBNAct(c, hidden, 1, act=act), ConvBNAct(hidden, hidden, 3, groups=hidden, act=act)]
        layers += [SqueezeExcite(hidden)] if se else []
        self.conv = nn.Sequential(*layers, nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def check_converted(model: nn.Module, x: torch.Tensor, **options) -> tc.conversion.ConversionReport:
    """Convert a copy of `model` and check it against the float64 original; return the report."""
    model = randomise_batchnorm(model).to(DEVICE)
    expected = copy.deepcopy(model).double()(x.double())
    converted = tc.convert(copy.deepcopy(model), **options)
    assert type(converted) is type(model)
    with torch.no_grad():
        assert_close(converted(x), expected, torch.float32, "converted output")
    return converted.tritonconv_report


def test_folds_batchnorms_called_in_forward():
    """BasicBlock calls conv1 then bn1 in forward, not in a Sequential: torch.fx sees the dataflow."""
    report = check_converted(BasicBlock().eval(), rand(1, 4, 7, 7), fold_batchnorm=True)
    assert sorted(report.folded) == [("bn1", "conv1"), ("bn2", "conv2"), ("downsample.1", "downsample.0")]
    assert report.not_folded == [] and report.notes == []


def test_fuses_depthwise_nested_in_a_sequential_with_the_next_sibling():
    model = nn.Sequential(InvertedResidual(), InvertedResidual(act=nn.ReLU)).eval()
    report = check_converted(model, rand(1, 4, 6, 6), fold_batchnorm=True, fuse_separable=True)
    assert len(report.folded) == 6 and report.not_folded == []
    assert [dw for dw, _ in report.fused] == ["0.conv.1.0", "1.conv.1.0"] and report.not_fused == []
    assert "ReLU6 0.conv.1.2" in report.fused[0][1] and "Conv2d 0.conv.2" in report.fused[0][1]


def test_folds_and_fuses_a_model_converted_before():
    model = randomise_batchnorm(InvertedResidual()).to(DEVICE).eval()
    x = rand(1, 4, 5, 5)
    expected = copy.deepcopy(model).double()(x.double())
    converted = tc.convert(tc.convert(model), fold_batchnorm=True, fuse_separable=True)
    report = converted.tritonconv_report
    assert len(report.folded) == 3 and len(report.fused) == 1
    with torch.no_grad():
        assert_close(converted(x), expected, torch.float32, "converted twice")


def test_structure_fallback_where_forward_does_not_trace():
    """A forward with data-dependent control flow does not trace: its Sequential order is matched instead
    (here a nested depthwise -> 1x1 and a stem conv -> BN), and each other child is traced on its own."""

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = BasicBlock(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x) if x.mean() > -1e9 else x  # a branch on data: torch.fx cannot trace it

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(ConvBNAct(4, 4, 3, groups=4), nn.Conv2d(4, 4, 1)), Gate()).eval()
    report = check_converted(model, rand(1, 3, 6, 6), fold_batchnorm=True, fuse_separable=True)
    assert len(report.notes) == 2 and all("does not trace with torch.fx" in n for n in report.notes)
    assert sorted(bn for bn, _ in report.folded) == ["1", "3.0.1", "4.block.bn1", "4.block.bn2",
                                                     "4.block.downsample.1"]
    assert [dw for dw, _ in report.fused] == ["3.0.0"]


def test_reports_why_each_pattern_is_left():
    """An SE block between depthwise and 1x1 (EfficientNet), an activation without a fused kernel
    (MobileNetV3's Hardswish), and a conv whose output has a second user."""

    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = nn.Sequential(InvertedResidual(se=True, act=nn.SiLU), InvertedResidual(act=nn.Hardswish), TwoUsers()).eval()
    report = check_converted(model, rand(1, 4, 6, 6), fold_batchnorm=True, fuse_separable=True)
    assert report.fused == []
    why = dict(report.not_fused)
    assert "SqueezeExcite 0.conv.2" in why["0.conv.1.0"], why["0.conv.1.0"]
    assert "Hardswish 1.conv.1.2 has no fused kernel" in why["1.conv.1.0"], why["1.conv.1.0"]
    assert dict(report.not_folded) == {
        "2.bn": "2.conv's output also feeds add() in TwoUsers 2, which must see it unnormalised"}
    text = str(report)
    assert "folded 6 of 7 BatchNorms" in text and "fused 0 of 2 depthwise convs" in text


def test_training_mode_folds_nothing_and_says_why():
    model = nn.Sequential(InvertedResidual()).train()
    report = tc.convert(model, fold_batchnorm=True, fuse_separable=True).tritonconv_report
    assert report.folded == [] and report.fused == [] and len(report.not_folded) == 3
    assert all("training mode" in why for _, why in report.not_folded)
    assert any("model is in training mode" in note for note in report.notes)
    assert "0.conv.1.1 between them is not folded: in training mode" in dict(report.not_fused)["0.conv.1.0"]


def test_fusion_without_folding_keeps_the_batchnorm_and_says_so():
    model = nn.Sequential(InvertedResidual()).eval()
    report = check_converted(model, rand(1, 4, 5, 5), fuse_separable=True)
    assert report.folded == report.not_folded == [] and report.fused == []
    assert dict(report.not_fused)["0.conv.1.0"] == ("BatchNorm2d 0.conv.1.1 between them is not folded: pass "
                                                    "fold_batchnorm=True")
