"""The benchmark suites: layers of real networks, each suite defined in one place, with the dtypes,
layouts and modes it runs by default (the CLI can narrow or change them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import Case

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = ("nchw", "channels_last")
MODES = ("fwd", "fwdbwd")


@dataclass(frozen=True)
class Suite:
    """A named list of cases and the (dtype, layout, mode) combinations each runs in by default."""

    name: str
    description: str
    cases: tuple[Case, ...]
    dtypes: tuple[str, ...] = ("fp16", "bf16")
    layouts: tuple[str, ...] = ("channels_last",)
    modes: tuple[str, ...] = MODES


def _deeplab() -> tuple[Case, ...]:
    """DeepLabv3 at output stride 8 (65x65 maps of a 513x513 crop, batch 16): ResNet's last two stages run
    dilated (3x3, d=2 and d=4) and ASPP's 3x3 branches at rates 12/24/36; each beside its d=1 control."""
    cases = []
    for c, d in ((256, 2), (512, 4)):
        stage = "res4" if c == 256 else "res5"
        for dil in (1, d):
            cases.append(Case("conv2d", f"{stage} 3x3 {c}->{c} d={dil}", 16, c, 65, 65, f=c, k=3,
                              padding=dil, dilation=dil))
    for dil in (1, 12, 24, 36):
        cases.append(Case("conv2d", f"ASPP 3x3 2048->256 d={dil}", 16, 2048, 65, 65, f=256, k=3,
                          padding=dil, dilation=dil))
    return tuple(cases)


def _depthwise(network: str, k: int, layers: tuple[tuple[int, int, int], ...]) -> tuple[Case, ...]:
    """Depthwise layers (channels, map size, stride) at a training batch (128) and an inference one (8)."""
    return tuple(Case("depthwise_conv2d", f"{network} {k}x{k} {c}@{h} s{s} N={n}", n, c, h, h, k=k, stride=s,
                      padding=k // 2)
                 for n in (128, 8) for c, h, s in layers)


# Depthwise-then-pointwise pairs: (network, channels in, out, map, kernel, activation between them).
_PAIRS = (("MobileNetV1", 256, 256, 28, 3, "relu"), ("MobileNetV1", 512, 512, 14, 3, "relu"),
          ("MobileNetV2", 144, 24, 56, 3, "relu6"), ("EfficientNet-B0", 672, 112, 14, 5, "silu"))


def _separable() -> tuple[Case, ...]:
    """The fused pairs, then the pointwise halves alone (MobileNetV1's pointwise convs end in ReLU,
    MobileNetV2/EfficientNet's projections are linear)."""
    fused = tuple(Case("depthwise_separable_conv2d", f"{net} {k}x{k} {c}->{f}@{h}", 128, c, h, h, f=f, k=k,
                       padding=k // 2, activation=act) for net, c, f, h, k, act in _PAIRS)
    pointwise = tuple(Case("pointwise_conv2d", f"{net} 1x1 {c}->{f}@{h}", 128, c, h, h, f=f,
                           activation="relu" if net == "MobileNetV1" else None) for net, c, f, h, _, _ in _PAIRS)
    return fused + pointwise


def _pooling() -> tuple[Case, ...]:
    """Max-pooling layers of VGG16 (2x2 s2), ResNet's stem (3x3 s2 p1) and AlexNet (3x3 s2), batch 128:
    max-pooling dropout (p=0.5), then plain max_pool2d."""
    layers = [(f"VGG16 2x2 {c}@{h}", c, h, 2, 2, 0)
              for c, h in ((64, 224), (128, 112), (256, 56), (512, 28), (512, 14))]
    layers += [("ResNet stem 3x3 64@112", 64, 112, 3, 2, 1)]
    layers += [(f"AlexNet 3x3 {c}@{h}", c, h, 3, 2, 0) for c, h in ((96, 55), (256, 27))]
    return tuple(Case(op, label, 128, c, h, h, k=k, stride=s, padding=pad, p=0.5 if op == "max_pool2d_dropout" else 0.0)
                 for op in ("max_pool2d_dropout", "max_pool2d") for label, c, h, k, s, pad in layers)


def _dropout() -> tuple[Case, ...]:
    """DropBlock (block 7, p=0.1, as in the DropBlock paper's ResNet-50) on ResNet's last three stages,
    spatial dropout (p=0.2), element dropout (p=0.5) for comparison, and cutout on CIFAR-10 (16x16 holes)
    and ImageNet-sized inputs; batch 128."""
    cases = [Case("drop_block2d", f"DropBlock 7 {c}@{h}", 128, c, h, h, p=0.1, size=7)
             for c, h in ((1024, 14), (512, 28), (256, 56))]
    cases += [Case("spatial_dropout2d", f"spatial dropout {c}@{h}", 128, c, h, h, p=0.2)
              for c, h in ((256, 56), (512, 28))]
    cases += [Case("dropout", "dropout 256@56", 128, 256, 56, 56, p=0.5)]
    cases += [Case("cutout2d", "cutout CIFAR-10 3@32", 128, 3, 32, 32, size=16),
              Case("cutout2d", "cutout ImageNet 3@224", 128, 3, 224, 224, size=112)]
    return tuple(cases)


def _quick() -> tuple[Case, ...]:
    """One real layer per op, at batch sizes that keep the whole suite under two minutes on an H200."""
    return (
        Case("conv2d", "res5 3x3 512->512 d=4", 8, 512, 65, 65, f=512, k=3, padding=4, dilation=4),
        Case("conv2d", "ASPP 3x3 2048->256 d=24", 8, 2048, 65, 65, f=256, k=3, padding=24, dilation=24),
        Case("depthwise_conv2d", "MobileNetV2 3x3 144@56 s1", 32, 144, 56, 56, k=3, padding=1),
        Case("depthwise_conv2d", "ConvNeXt-T 7x7 192@28", 32, 192, 28, 28, k=7, padding=3),
        Case("pointwise_conv2d", "MobileNetV2 1x1 144->24@56", 32, 144, 56, 56, f=24),
        Case("depthwise_separable_conv2d", "MobileNetV2 3x3 144->24@56", 32, 144, 56, 56, f=24, k=3, padding=1,
             activation="relu6"),
        Case("max_pool2d", "ResNet stem 3x3 64@112", 32, 64, 112, 112, k=3, stride=2, padding=1),
        Case("max_pool2d_dropout", "VGG16 2x2 128@112", 32, 128, 112, 112, k=2, stride=2, p=0.5),
        Case("dropout", "dropout 256@56", 32, 256, 56, 56, p=0.5),
        Case("spatial_dropout2d", "spatial dropout 256@56", 32, 256, 56, 56, p=0.2),
        Case("drop_block2d", "DropBlock 7 512@28", 32, 512, 28, 28, p=0.1, size=7),
        Case("cutout2d", "cutout ImageNet 3@224", 32, 3, 224, 224, size=112),
    )


_MOBILENET_V2 = ((32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1), (576, 14, 1),
                 (960, 7, 1))
_ALL_DTYPES = ("fp16", "bf16", "fp32")

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("quick", "one layer per op, bf16 channels_last (CI checks it in Triton's interpreter)", _quick(),
          dtypes=("bf16",)),
    Suite("deeplab", "DeepLabv3 dilated ResNet stages and ASPP, with d=1 controls", _deeplab()),
    Suite("mobilenet_v2", "MobileNetV2 3x3 depthwise layers", _depthwise("MobileNetV2", 3, _MOBILENET_V2),
          dtypes=_ALL_DTYPES, layouts=LAYOUTS),
    Suite("efficientnet_b0", "EfficientNet-B0 5x5 depthwise layers",
          _depthwise("EfficientNet-B0", 5, ((144, 56, 2), (240, 28, 1), (672, 14, 1), (1152, 7, 1))),
          dtypes=_ALL_DTYPES, layouts=LAYOUTS),
    Suite("convnext_t", "ConvNeXt-T 7x7 depthwise layers",
          _depthwise("ConvNeXt-T", 7, ((96, 56, 1), (192, 28, 1), (384, 14, 1), (768, 7, 1))),
          dtypes=_ALL_DTYPES, layouts=LAYOUTS),
    Suite("replknet", "RepLKNet 31x31 depthwise layers", _depthwise("RepLKNet", 31, ((128, 56, 1), (256, 28, 1))),
          dtypes=_ALL_DTYPES, layouts=LAYOUTS),
    Suite("separable", "fused depthwise-separable pairs and their pointwise halves", _separable(),
          dtypes=_ALL_DTYPES, layouts=LAYOUTS),
    Suite("pooling", "VGG16/ResNet/AlexNet max-pooling layers: max-pooling dropout and max_pool2d", _pooling(),
          layouts=LAYOUTS),
    Suite("dropout", "DropBlock, spatial dropout, dropout and cutout layers", _dropout(), layouts=LAYOUTS),
)}
