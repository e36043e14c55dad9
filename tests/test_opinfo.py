"""PyTorch's own operator test inputs through our ops: the OpInfo samples (`op_db`) of
nn.functional.conv2d, max_pool2d, dropout and dropout2d, and the ModuleInfo samples (`module_db`) of
nn.Conv2d and nn.MaxPool2d.

Each sample runs as given, as its `noncontiguous()` variant (every tensor a strided view, and a strided
dy) and, when its input is 4-D, as a channels_last variant (every 4-D tensor converted), our op in
float32 against torch's in float64:
- conv2d, max_pool2d: values within tolerance, NaN in the same places, every gradient, the output's and
  the input gradient's memory format as torch's, max_pool2d's indices (return_indices=True) exactly;
- dropout, dropout2d: semantics, not bit patterns (the masks differ by design): shape, identity when
  not training or p = 0, zeros for p = 1, otherwise each element (dropout) or each (dim 0, dim 1) block
  (dropout2d) either 0 or x / (1 - p), and the gradient the same mask applied to dy;
- every `error_inputs` sample must raise.
The module samples run through `tc.nn` (the same constructor) and `tc.convert` (a converted copy of
torch's module), forward and parameter gradients.

Time: CI runs this module in Triton's interpreter on 2 cores, within a few minutes. For that,
max_pool2d's 1440 samples (kernel sizes, strides, paddings, dilations, ceil_mode and return_indices over
six input shapes) are subsampled deterministically: every MAX_POOL_STEP-th sample runs, a step prime to
the sizes of the options' product, so every option's values still occur. The other ops run every sample.
Samples are generated once per session under a fixed seed, so a test id names the same inputs in every
run and order.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import module_db

import tritonconv as tc
from conftest import DEVICE, assert_close

# Importing torch.testing._internal froze torch.backends' global flags (torch.backends.disable_global_flags:
# torch's own tests set cudnn flags only inside `flags()` blocks), for the whole pytest session. The
# benchmark (tests/test_bench.py) sets cudnn.benchmark directly, as a user may: unfreeze them.
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
assert not torch.backends.flags_frozen()

OPS = {
    "nn.functional.conv2d": tc.conv2d,
    "nn.functional.max_pool2d": tc.max_pool2d,
    "nn.functional.dropout": tc.dropout,
    "nn.functional.dropout2d": tc.spatial_dropout2d,
}
MAX_POOL_STEP = 17  # prime to 1440 = 2^5 3^2 5, so the subsample walks every option's values
STEPS = {"nn.functional.max_pool2d": MAX_POOL_STEP}
VARIANTS = ("given", "noncontiguous", "channels_last")


def _opinfo(name: str):
    [info] = [op for op in op_db if op.name == name and op.variant_test_name == ""]
    return info


@functools.cache
def _samples(name: str) -> list:
    """The op's float32 samples (every STEPS[name]-th), generated once under a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        samples = list(_opinfo(name).sample_inputs(DEVICE, torch.float32, requires_grad=True))
    return samples[::STEPS.get(name, 1)]


def _count(name: str) -> int:
    # Counting samples at collection generates them without the fixed seed; _samples regenerates them.
    return len(list(_opinfo(name).sample_inputs("cpu", torch.float32)))


def _params():
    for name in OPS:
        for i in range(0, _count(name), STEPS.get(name, 1)):
            for variant in VARIANTS:
                yield pytest.param(name, i // STEPS.get(name, 1), variant, id=f"{name[14:]}-{i}-{variant}")


def _map(fn, inputs):
    """(input, args, kwargs) with `fn` applied to every tensor."""
    x, args, kwargs = inputs
    f = lambda v: fn(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
    return f(x), [f(a) for a in args], {k: f(v) for k, v in kwargs.items()}


def _variant(sample, variant: str):
    """The sample's (input, args, kwargs) as fresh leaf tensors (grad as in the sample) for `variant`,
    or None when the variant does not apply (channels_last of an input that is not 4-D)."""
    if variant == "noncontiguous":
        sample = sample.noncontiguous()
    elif variant == "channels_last" and sample.input.dim() != 4:
        return None

    def leaf(t: torch.Tensor) -> torch.Tensor:
        if variant == "channels_last" and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.detach().clone(memory_format=torch.preserve_format) if variant != "noncontiguous" \
            else t.detach()

    return _map(lambda t: leaf(t).requires_grad_(t.requires_grad), (sample.input, sample.args, sample.kwargs))


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().requires_grad_(t.requires_grad)


def _tensors(inputs) -> list[torch.Tensor]:
    x, args, kwargs = inputs
    return [t for t in (x, *args, *kwargs.values()) if isinstance(t, torch.Tensor)]


def _dy(ref: torch.Tensor, variant: str) -> torch.Tensor:
    return torch.testing.make_tensor(ref.shape, dtype=torch.float32, device=DEVICE, low=-1, high=1,
                                     noncontiguous=variant == "noncontiguous")


def _memory_format(t: torch.Tensor) -> str:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous" if t.is_contiguous() else "strided"


def _check_deterministic(name: str, inputs, variant: str) -> None:
    x, args, kwargs = inputs
    out = OPS[name](x, *args, **kwargs)
    ref_inputs = _map(_float64, inputs)
    ref = getattr(F, name[14:])(ref_inputs[0], *ref_inputs[1], **ref_inputs[2])
    if isinstance(ref, tuple):  # max_pool2d(return_indices=True)
        (out, indices), (ref, ref_indices) = out, ref
        assert torch.equal(indices, ref_indices), "indices"
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.equal(out.isnan(), ref.isnan()), "NaN positions"
    assert_close(out.nan_to_num(), ref.nan_to_num(), torch.float32, "forward")
    if ref.dim() == 4:
        assert _memory_format(out) == _memory_format(ref), "output memory format"
    dy = _dy(ref, variant)
    out.backward(dy)
    ref.backward(dy.double())
    for i, (t, r) in enumerate(zip(_tensors(inputs), _tensors(ref_inputs))):
        if t.requires_grad:
            assert_close(t.grad, r.grad, torch.float32, f"gradient of tensor {i}")
            if t.dim() == 4 and i == 0:
                assert _memory_format(t.grad) == _memory_format(r.grad), "input gradient memory format"


def _check_dropout(name: str, inputs, variant: str) -> None:
    x, args, kwargs = inputs
    p, training = kwargs.get("p", 0.5), kwargs.get("training", True)
    y = OPS[name](x, *args, **kwargs)
    assert y.shape == x.shape and y.dtype == x.dtype
    if not training or p == 0:
        kept = torch.ones_like(x, dtype=torch.bool)
        assert torch.equal(y, x), "identity"
    elif p == 1:
        kept = torch.zeros_like(x, dtype=torch.bool)
        assert torch.equal(y, torch.zeros_like(x)), "all dropped"
    else:
        kept = y != 0
        assert_close(torch.where(kept, y, 0), torch.where(kept, x.double() / (1 - p), 0), torch.float32, "kept")
        if name.endswith("dropout2d") and x.dim() >= 2:
            blocks = kept.reshape(*x.shape[:2], -1)
            assert (blocks.all(-1) | ~blocks.any(-1)).all(), "whole (dim 0, dim 1) blocks dropped"
    scale = 1 / (1 - p) if training and p < 1 else 1.0
    dy = _dy(y, variant)
    y.backward(dy)
    assert_close(x.grad, torch.where(kept, dy.double() * scale, 0), torch.float32, "gradient")


@pytest.mark.parametrize("name,index,variant", list(_params()))
def test_opinfo_sample(name, index, variant):
    inputs = _variant(_samples(name)[index], variant)
    if inputs is None:
        assert variant == "channels_last"  # an input that is not 4-D has no channels_last variant
        return
    if "dropout" in name:
        _check_dropout(name, inputs, variant)
    else:
        _check_deterministic(name, inputs, variant)


@functools.cache
def _error_inputs(name: str) -> list:
    info = _opinfo(name)
    return list(info.error_inputs(DEVICE)) if info.error_inputs_func is not None else []


@pytest.mark.parametrize("name,index", [pytest.param(name, i, id=f"{name[14:]}-{i}")
                                        for name in OPS for i in range(len(_error_inputs(name)))])
def test_opinfo_error_input(name, index):
    """Inputs torch rejects are rejected here too (with our own exception type and message)."""
    error = _error_inputs(name)[index]
    sample = error.sample_input
    with pytest.raises(Exception):
        OPS[name](sample.input, *sample.args, **sample.kwargs)


@functools.cache
def _module_samples(cls: type) -> list:
    [info] = [m for m in module_db if m.module_cls is cls]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return list(info.module_inputs_func(info, device=DEVICE, dtype=torch.float32, requires_grad=True,
                                            training=True))


def _module_params():
    for cls in (torch.nn.Conv2d, torch.nn.MaxPool2d):
        for i in range(len(_module_samples(cls))):
            for how in ("tc.nn", "tc.convert"):
                yield pytest.param(cls, i, how, id=f"{cls.__name__}-{i}-{how}")


@pytest.mark.parametrize("cls,index,how", list(_module_params()))
def test_moduleinfo_sample(cls, index, how):
    sample = _module_samples(cls)[index]
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    theirs = cls(*args, **kwargs).to(DEVICE)
    if how == "tc.nn":
        ours = getattr(tc.nn, cls.__name__)(*args, **kwargs).to(DEVICE)
        ours.load_state_dict(theirs.state_dict())
    else:
        ours = tc.convert(torch.nn.Sequential(cls(*args, **kwargs).to(DEVICE)))[0]
        ours.load_state_dict(theirs.state_dict())
        assert type(ours) is getattr(tc.nn, cls.__name__)
    theirs = theirs.double()
    [x] = sample.forward_input.args
    x = x.detach().requires_grad_()
    xr = x.detach().double().requires_grad_()
    out, ref = ours(x), theirs(xr)
    if isinstance(ref, tuple):
        (out, indices), (ref, ref_indices) = out, ref
        assert torch.equal(indices, ref_indices)
    assert_close(out, ref, torch.float32, "forward")
    dy = _dy(ref, "given")
    out.backward(dy)
    ref.backward(dy.double())
    assert_close(x.grad, xr.grad, torch.float32, "input gradient")
    for (pname, p), pr in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p.grad, pr.grad, torch.float32, f"{pname} gradient")
