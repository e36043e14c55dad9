"""The torch.library contract of every tritonconv:: op: schema, fake implementation and autograd
registration (`torch.library.opcheck`), on the arguments the public ops' samples pass it."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from conftest import run_samples

OPS = sorted(name.removeprefix("tritonconv::") for name in torch._C._dispatch_get_all_op_names()
             if name.startswith("tritonconv::"))


class _FirstCalls(TorchDispatchMode):
    """Keeps a copy of the arguments of each tritonconv:: op's first call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.removeprefix("tritonconv::")
        if func.namespace == "tritonconv" and name not in self.calls:
            self.calls[name] = (func, *tree_map(lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a,
                                                (args, kwargs)))
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def first_calls() -> dict[str, tuple]:
    with _FirstCalls() as mode:
        run_samples()
    return mode.calls


def test_every_op_is_registered():
    assert {"conv2d", "conv2d_input_grad", "depthwise_conv2d", "max_pool2d", "dropout_mask"} <= set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, first_calls):
    assert op in first_calls, f"no public op's sample (conftest.op_sample) reaches tritonconv::{op}"
    func, args, kwargs = first_calls[op]
    # Floating inputs require grad, so the autograd registration is exercised.
    args = tree_map(lambda a: a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a, args)
    torch.library.opcheck(func, args, kwargs,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
