"""PyTorch references the benchmark times against and the tests compare with: activations by name,
and the random ops as PyTorch compositions (no fused PyTorch op exists for them)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# PyTorch's function for each activation name of the pointwise, depthwise and separable ops.
ACTIVATIONS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda v: v, "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu}


def torch_drop_block2d(x: torch.Tensor, p: float, block_size: int, eps: float = 1e-6) -> torch.Tensor:
    """torchvision's drop_block2d (training), written out as PyTorch ops: Bernoulli(gamma) seeds on the
    grid where a whole block fits, padded by bs//2, grown into bs x bs blocks by a stride-1 max pool, and
    one scale numel / sum(mask) for the whole tensor. One change: the mask is summed in float32, since a
    float16 sum of a large mask overflows to inf and zeroes the output."""
    if p == 0.0:
        return x
    n, c, h, w = x.shape
    gamma = p * h * w / (block_size ** 2 * (h - block_size + 1) * (w - block_size + 1))
    noise = torch.empty((n, c, h - block_size + 1, w - block_size + 1), dtype=x.dtype, device=x.device)
    noise.bernoulli_(gamma)
    noise = F.pad(noise, [block_size // 2] * 4, value=0)
    noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(block_size, block_size), padding=block_size // 2)
    mask = 1 - noise
    return x * mask * (mask.numel() / (eps + mask.sum(dtype=torch.float32))).to(x.dtype)


def torch_cutout2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cutout as PyTorch ops: in every (sample, channel) map, a size x size square with a uniformly
    random centre, clipped at the border, is zeroed; no rescaling."""
    n, c, h, w = x.shape
    top = torch.randint(0, h, (n, c, 1, 1), device=x.device) - size // 2
    left = torch.randint(0, w, (n, c, 1, 1), device=x.device) - size // 2
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(hole, 0)


def torch_max_pool2d_dropout(x: torch.Tensor, k: int, stride: int, padding: int, p: float) -> torch.Tensor:
    """Max-pooling dropout as PyTorch composes it: a Bernoulli(p) drop mask, masked_fill with -inf,
    max_pool2d, and 0 where a whole window was dropped."""
    drop = torch.empty_like(x, dtype=torch.bool).bernoulli_(p)
    y = F.max_pool2d(x.masked_fill(drop, float("-inf")), k, stride, padding)
    return y.masked_fill(y == float("-inf"), 0.0)


def drop_block_probability(h: int, w: int, block_size: int, gamma: float) -> torch.Tensor:
    """P(element (i, j) of an h x w map is dropped by DropBlock) = 1 - (1 - gamma)^(number of seed positions
    whose block_size x block_size block covers it), as a float64 (h, w) tensor."""
    def cover(size: int) -> torch.Tensor:
        """Seed positions along one axis whose block covers each position."""
        i = torch.arange(size, dtype=torch.float64)
        return torch.clamp(i, max=size - block_size) - torch.clamp(i - block_size + 1, min=0) + 1

    return 1 - (1 - gamma) ** (cover(h)[:, None] * cover(w)[None, :])
