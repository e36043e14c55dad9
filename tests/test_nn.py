"""tritonconv.nn modules, convert(), torch.compile, autocast, checkpointing and DDP on tiny models."""

import copy
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import tritonconv as tc
import tritonconv.nn as tnn
from tritonconv.testing import randomise_batchnorm
from conftest import DEVICE, assert_close, rand


def mobilenet_block(c: int = 6, expand: int = 2) -> nn.Sequential:
    """An inverted-residual-style block: 1x1 expand, BN, ReLU6, 3x3 depthwise, BN, ReLU6, 1x1 project,
    then dropout and a max pool."""
    hidden = c * expand
    return nn.Sequential(
        nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c),
        nn.Dropout2d(0.1), nn.MaxPool2d(2),
    )


def deeplab_block(c: int = 4) -> nn.Sequential:
    """Dilated 3x3 convs at rates 1, 2, 4 (receptive field 15), a reflect-padded conv and dropout."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(c, 5, 3, padding=4, dilation=4, padding_mode="reflect"),
        nn.Dropout(0.2),
    )


@pytest.mark.parametrize("build", [mobilenet_block, deeplab_block])
def test_convert_keeps_state_dict_and_eval_output(build):
    model = randomise_batchnorm(build()).to(DEVICE).eval()
    keys = list(model.state_dict())
    x = rand(2, model[0].in_channels, 8, 8)
    expected = model(x)
    converted = tc.nn.convert(copy.deepcopy(model))
    assert list(converted.state_dict()) == keys
    assert all(isinstance(m, (tnn.Conv2d, tnn.MaxPool2d, tnn.Dropout, tnn.SpatialDropout2d))
               for m in converted.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.Dropout, nn.Dropout2d)))
    assert isinstance(converted[0], nn.Conv2d)
    report = converted.tritonconv_report
    assert len(report.replaced) == sum(isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.Dropout, nn.Dropout2d))
                                       for m in model.modules())
    assert "replaced" in str(report)
    assert_close(converted(x), expected, torch.float32, "converted eval output")


def test_convert_folds_batchnorm_and_fuses_separable():
    model = randomise_batchnorm(mobilenet_block()).to(DEVICE).eval()
    x = rand(1, 6, 7, 7)
    expected = model(x)
    converted = tc.nn.convert(copy.deepcopy(model), fold_batchnorm=True, fuse_separable=True)
    report = converted.tritonconv_report
    assert len(report.folded) == 3 and len(report.fused) == 1
    assert any(isinstance(m, tnn.DepthwiseSeparableConv2d) for m in converted.modules())
    assert_close(converted(x), expected, torch.float32, "folded + fused")


def test_convert_reports_what_it_leaves():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(2, 2, 3), nn.Conv2d(2, 2, 3).double(), nn.Dropout(inplace=True))
    report = tc.nn.convert(model).tritonconv_report
    assert report.replaced == [] and len(report.left) == 3
    assert "subclass" in str(report) and "dtype" in str(report) and "inplace" in str(report)


def test_modules_match_torch_in_eval_and_train_at_p0():
    x = rand(2, 4, 9, 9)
    torch_modules = [nn.Conv2d(4, 6, 3, padding="same", dilation=2), nn.MaxPool2d(3, 2, 1, ceil_mode=True)]
    for module in torch_modules:
        module = module.to(DEVICE)
        ours = tc.nn.convert(nn.Sequential(copy.deepcopy(module)))[0]
        assert_close(ours(x), module(x), torch.float32, type(module).__name__)
    for module in [tnn.Dropout(0.0), tnn.SpatialDropout2d(0.0), tnn.DropBlock2d(0.0, 3), tnn.MaxPoolDropout2d(2, p=0.0)]:
        module.train()
        expected = F.max_pool2d(x, 2) if isinstance(module, tnn.MaxPoolDropout2d) else x
        assert_close(module(x), expected, torch.float32, type(module).__name__)
    for module in [tnn.Dropout(0.5), tnn.SpatialDropout2d(0.5), tnn.DropBlock2d(0.5, 3), tnn.Cutout2d(3)]:
        assert torch.equal(module.eval()(x), x), f"{type(module).__name__} is the identity in eval"


def test_max_pool_dropout_module_takes_the_functional_arguments_in_order():
    x = rand(2, 4, 9, 9)
    module = tnn.MaxPoolDropout2d(3, 1, 1, 2, 0.0)  # kernel_size, stride, padding, dilation, p
    assert_close(module(x), F.max_pool2d(x, 3, 1, 1, 2), torch.float32)
    assert "dilation=2" in repr(module)


def test_separable_module_matches_composition():
    module = tnn.DepthwiseSeparableConv2d(5, 7, 3, padding=1, activation="relu6").to(DEVICE)
    x = rand(2, 5, 6, 6)
    mid = F.relu6(F.conv2d(x, module.depthwise_weight, module.depthwise_bias, padding=1, groups=5))
    assert_close(module(x), F.conv2d(mid, module.pointwise_weight, module.pointwise_bias), torch.float32, "fused")


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    model = tc.nn.convert(nn.Sequential(deeplab_block(), nn.Conv2d(5, 2, 1))).to(DEVICE)
    x, target = rand(4, 4, 8, 8), rand(4, 2, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_compile_fullgraph_matches_eager():
    model = tc.nn.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                                        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 5, 1),
                                        nn.MaxPool2d(2))).to(DEVICE)
    x = rand(2, 3, 8, 8, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    assert_close(out, model(x), torch.float32, "compiled forward")
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    assert_close(grad, x.grad, torch.float32, "compiled backward")


def test_autocast_no_grad_inference_mode_checkpoint():
    model = tc.nn.convert(deeplab_block()).to(DEVICE).eval()
    x = rand(1, 4, 8, 8)
    expected = model(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert_close(out, expected, torch.bfloat16, "autocast")
    with torch.no_grad():
        assert_close(model(x), expected, torch.float32, "no_grad")
    with torch.inference_mode():
        assert_close(model(x), expected, torch.float32, "inference_mode")
    xg = x.clone().requires_grad_()
    checkpoint(model, xg, use_reentrant=False).sum().backward()
    g = xg.grad.clone()
    xg.grad = None
    model(xg).sum().backward()
    assert_close(g, xg.grad, torch.float32, "checkpoint grad")


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, torch.distributed as dist
    from torch import nn
    import tritonconv as tc

    def model():
        torch.manual_seed(0)
        return tc.nn.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                                           nn.Conv2d(4, 2, 1)))

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6)
    if world == 1:
        net = model()
        net(x).square().mean().backward()
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        net = nn.parallel.DistributedDataParallel(model())
        net(x[rank * 2:(rank + 1) * 2]).square().mean().backward()
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (an abort otherwise)
        dist.destroy_process_group()
    if rank == 0:
        torch.save([p.grad for p in net.parameters()], out)
    # Leave without running C++ static destructors: a gloo thread still joinable at interpreter teardown
    # aborts the process ("terminate called without an active exception", about 1 run in 5 on 2 loaded
    # cores) after all the work above is done.
    sys.stdout.flush()
    os._exit(0)
""")


def test_ddp_two_processes_match_single_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    single = subprocess.run([sys.executable, str(script), "0", "1", port, str(tmp_path / "one.pt")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", port, str(tmp_path / "two.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for rank, proc in enumerate(procs):
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"rank {rank}:\n{output[-3000:]}"
    for one, two in zip(torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")):
        assert_close(two, one, torch.float32, "DDP gradient")


def test_modules_check_their_arguments_when_built():
    """As nn.Dropout does: a bad argument fails in __init__, naming it, not on the first forward."""
    for build, match in [(lambda: tnn.DropBlock2d(2.0, 3), "p must be in"), (lambda: tnn.DropBlock2d(0.1, 0), "block_size"),
                         (lambda: tnn.Cutout2d(2.5), "size must be an int"),
                         (lambda: tnn.MaxPoolDropout2d(2, p=2.0), "p must be in"),
                         (lambda: tnn.MaxPoolDropout2d(2, padding=2), "padding must be at most half"),
                         (lambda: tnn.MaxPool2d(0), "kernel_size must be >= 1"),
                         (lambda: tnn.DepthwiseSeparableConv2d(4, 4, 3, stride=2, padding="same"), "same"),
                         (lambda: tnn.DepthwiseSeparableConv2d(4, 4, 3, activation="tanh"), "activation")]:
        with pytest.raises((ValueError, TypeError), match=match):
            build()


def test_dtype_error_from_a_module_names_the_model_fix():
    model = tc.convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2))).double()
    with pytest.raises(TypeError, match=r"tritonconv.nn.Conv2d got a torch.float64 input.*model.float\(\)"):
        model(rand(1, 2, 6, 6).double())
    with pytest.raises(TypeError, match=r"tritonconv.nn.MaxPool2d .*model.float\(\)"):
        model[1](rand(1, 2, 6, 6).double())


def test_unbatched_input_is_one_sample():
    """As torch's conv and pooling modules do, a (C, H, W) input runs as a batch of one."""
    x = rand(3, 7, 7)
    conv = tnn.Conv2d(3, 4, 3, padding=1).to(DEVICE)
    sep = tnn.DepthwiseSeparableConv2d(3, 5, 3, padding=1, activation="relu").to(DEVICE)
    mid = F.relu(F.conv2d(x, sep.depthwise_weight, sep.depthwise_bias, padding=1, groups=3))
    for module, expected in [(conv, F.conv2d(x, conv.weight, conv.bias, padding=1)),
                             (sep, F.conv2d(mid, sep.pointwise_weight, sep.pointwise_bias)),
                             (tnn.MaxPool2d(2), F.max_pool2d(x, 2)), (tnn.MaxPoolDropout2d(2, p=0.0), F.max_pool2d(x, 2))]:
        assert_close(module(x), expected, torch.float32, type(module).__name__)
