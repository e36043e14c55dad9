"""`convert`: swap tritonconv's modules into an existing model, fold eval-mode BatchNorms into the convs
that feed them, and fuse depthwise -> [BatchNorm] -> [activation] -> 1x1 chains into one module.

Folding and fusing follow the model's dataflow, not the order modules were registered in: the model is
traced with `torch.fx` (torchvision's models trace), so a ResNet block that calls `self.conv1` then
`self.bn1` in its `forward` is seen as conv -> BN. Where a forward does not trace (data-dependent control
flow, say), its `nn.Sequential` children are matched in order (their forward is known) and every other
child is traced on its own, recursively. A pattern is rewritten only when the dataflow proves it: the
conv's output feeds nothing else, and every module the rewrite removes is called exactly once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

import tritonconv.nn as tnn
from tritonconv.nn import Conv2d, DepthwiseSeparableConv2d, Dropout, MaxPool2d, SpatialDropout2d


@dataclass
class ConversionReport:
    """What `convert` did and did not do, each entry naming the module (its qualified name)."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, from type, to type)
    left: list[tuple[str, str, str]] = field(default_factory=list)      # (name, type, why it was kept)
    folded: list[tuple[str, str]] = field(default_factory=list)         # (BatchNorm, the conv it went into)
    not_folded: list[tuple[str, str]] = field(default_factory=list)     # (BatchNorm, why not)
    fused: list[tuple[str, str]] = field(default_factory=list)          # (depthwise conv, what it absorbed)
    not_fused: list[tuple[str, str]] = field(default_factory=list)      # (depthwise conv, why not)
    notes: list[str] = field(default_factory=list)                      # how the dataflow was found

    def __str__(self) -> str:
        counts = [f"replaced {len(self.replaced)} modules", f"left {len(self.left)}"]
        if self.folded or self.not_folded:
            counts.append(f"folded {len(self.folded)} of {len(self.folded) + len(self.not_folded)} BatchNorms")
        if self.fused or self.not_fused:
            counts.append(f"fused {len(self.fused)} of {len(self.fused) + len(self.not_fused)} depthwise convs "
                          "with their 1x1 conv")
        lines = [", ".join(counts)]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  {name}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  {name}: kept {kind} ({why})" for name, kind, why in self.left]
        lines += [f"  {bn}: BatchNorm folded into {conv}" for bn, conv in self.folded]
        lines += [f"  {bn}: BatchNorm not folded: {why}" for bn, why in self.not_folded]
        lines += [f"  {dw}: fused into DepthwiseSeparableConv2d with {chain}" for dw, chain in self.fused]
        lines += [f"  {dw}: depthwise conv not fused: {why}" for dw, why in self.not_fused]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The dataflow: each call a forward makes, with its inputs and users.
# ---------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Node:
    """One call in a forward: a module (its qualified name), a function or method (its name), or a value that
    is no call (an input, an output, a parameter read: a description)."""

    name: str
    module: nn.Module | None
    call: bool = True
    owners: tuple[tuple[str, str], ...] = ()  # (name, type) of the modules whose forward made it, outermost first
    inputs: list[_Node] = field(default_factory=list)
    users: list[_Node] = field(default_factory=list)

    def describe(self) -> str:
        if self.module is not None:
            return f"{type(self.module).__name__} {self.name}"
        if not self.call:
            return self.name
        owner = f" in {self.owners[-1][1]} {self.owners[-1][0]}" if self.owners else ""
        return f"{self.name}(){owner}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with tritonconv's modules as leaves (their ops are not traceable Python)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).__module__ == tnn.__name__ or super().is_leaf_module(m, module_qualified_name)


def _leaf(module: nn.Module) -> bool:
    return _Tracer().is_leaf_module(module, "")


def _traced(root: nn.Module, prefix: str) -> list[_Node]:
    """The calls of `root.forward` from a torch.fx trace (raises what tracing raises)."""
    graph = _Tracer().trace(root)
    nodes: dict[torch.fx.Node, _Node] = {}
    for n in graph.nodes:
        owners = []
        for path, _ in (n.meta.get("nn_module_stack") or {}).values():
            try:
                owners.append((_join(prefix, path), type(root.get_submodule(path)).__name__))
            except (AttributeError, TypeError):
                pass  # a stack entry this torch version names differently: only descriptions lose it
        if n.op == "call_module":
            node = _Node(_join(prefix, n.target), root.get_submodule(n.target), owners=tuple(owners))
        elif n.op in ("placeholder", "output", "get_attr"):
            what = {"placeholder": "the input", "output": "the output", "get_attr": "the tensor"}[n.op]
            node = _Node(f"{what} {n.name} of {prefix or type(root).__name__}", None, call=False, owners=tuple(owners))
        else:
            target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            node = _Node(target, None, owners=tuple(owners))
        node.inputs = [nodes[i] for i in n.all_input_nodes]
        for i in node.inputs:
            i.users.append(node)
        nodes[n] = node
    return list(nodes.values())


def _in_order(module: nn.Module) -> bool:
    """Whether `module.forward` calls its children one after another (nn.Sequential's forward)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _sequence(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The modules a Sequential-like module calls, in order, inlining nested Sequential-like children."""
    calls = []
    for name, child in module.named_children():
        full = _join(prefix, name)
        calls += _sequence(child, full) if _in_order(child) else [(full, child)]
    return calls


def _dataflow(module: nn.Module, prefix: str, notes: list[str]) -> list[list[_Node]]:
    """Graphs of the calls `module`'s forward makes: its fx trace; else, when it does not trace, the chain of
    its Sequential order (if it has one) and the graphs of the children that chain does not open up."""
    try:
        return [_traced(module, prefix)]
    except Exception as e:  # noqa: BLE001 (any tracing failure means: match the structure instead)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        notes.append(f"{prefix or type(module).__name__} ({type(module).__name__}) does not trace with torch.fx "
                     f"({type(e).__name__}: {first}); matched its nn.Sequential structure and traced its children "
                     "one by one instead")
    graphs = []
    if _in_order(module):
        calls = _sequence(module, prefix)
        ends = [_Node(f"the {end} of {prefix or type(module).__name__}", None, call=False) for end in ("input", "output")]
        chain = [ends[0]] + [_Node(name, child) for name, child in calls] + [ends[1]]
        for a, b in zip(chain, chain[1:]):
            a.users.append(b)
            b.inputs.append(a)
        graphs.append(chain)
    else:
        calls = [(_join(prefix, name), child) for name, child in module.named_children()]
    for name, child in calls:
        if not _leaf(child):
            graphs += _dataflow(child, name, notes)
    return graphs


# ---------------------------------------------------------------------------------------------------------
# Folding BatchNorm into the conv before it.
# ---------------------------------------------------------------------------------------------------------

_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_PLAIN_CONVS = (nn.Conv2d, Conv2d)  # convs whose forward is F.conv2d's (ours, from an earlier convert, too)


def _fold_blocker(bn_nodes: list[_Node], calls: Counter, aliased: set[int]) -> tuple[_Node | None, str | None]:
    """(the conv node, None) when the BatchNorm called at `bn_nodes` folds into the conv feeding it, else
    (None, why not)."""
    if not bn_nodes:
        return None, ("never called by a forward that traced, nor inside an nn.Sequential, so its input is "
                      "unknown")
    if len(bn_nodes) > 1:
        return None, f"called {len(bn_nodes)} times"
    node = bn_nodes[0]
    bn = node.module
    if id(bn) in aliased:
        return None, "the same module is registered under several names"
    conv = node.inputs[0] if len(node.inputs) == 1 else None
    if conv is None or not isinstance(conv.module, nn.Conv2d):
        return None, f"its input is {conv.describe() if conv else 'several tensors'}, not an nn.Conv2d"
    if type(conv.module) not in _PLAIN_CONVS:
        return None, f"its input comes from {conv.describe()}, a Conv2d subclass whose forward may differ"
    if calls[id(conv.module)] != 1 or id(conv.module) in aliased:
        return None, f"{conv.name} is called {calls[id(conv.module)]} times (or shared): folding would change them all"
    if len(conv.users) != 1:
        return None, (f"{conv.name}'s output also feeds " + ", ".join(u.describe() for u in conv.users if u is not node)
                      + ", which must see it unnormalised")
    if bn.num_features != conv.module.out_channels:
        return None, f"{bn.num_features} features but {conv.name} has {conv.module.out_channels} output channels"
    if not bn.track_running_stats or bn.running_mean is None:
        return None, "it has no running statistics (track_running_stats=False) and always normalises by the batch"
    if bn.training:
        return None, ("in training mode it normalises by the batch's statistics; call model.eval() before "
                      "convert to fold (folding is for inference)")
    return conv, None


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it: w' = w * g / sqrt(var + eps),
    b' = (b - mean) * g / sqrt(var + eps) + beta, computed in float64."""
    with torch.no_grad():
        scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.double()
        shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.copy_((conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype))
        new_bias = ((bias - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


# ---------------------------------------------------------------------------------------------------------
# Fusing depthwise -> [BatchNorm] -> [activation] -> 1x1.
# ---------------------------------------------------------------------------------------------------------

_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu"}


def _activation_name(module: nn.Module) -> str | None:
    """The fused kernel's name for an activation module, or None when it has none."""
    if isinstance(module, nn.GELU) and module.approximate != "none":
        return None
    return _ACTIVATIONS.get(type(module))


def _is_depthwise(module: nn.Module | None) -> bool:
    return (type(module) in _PLAIN_CONVS and module.groups == module.in_channels
            and module.out_channels % module.in_channels == 0 and module.padding_mode == "zeros")


def _is_pointwise(module: nn.Module | None) -> bool:
    return (type(module) in _PLAIN_CONVS and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.groups == 1 and module.padding in ((0, 0), "valid"))


def _following(node: _Node, steps: int = 4) -> str:
    """What comes after `node` along single-user edges, for a reason: 'A -> B -> C'."""
    path = []
    while len(node.users) == 1 and len(path) < steps:
        node = node.users[0]
        path.append(node.describe())
        if isinstance(node.module, (nn.Conv2d, nn.Linear)):
            break
    return " -> ".join(path)


def _users_context(node: _Node) -> str:
    """Where the users of `node` live, when a module other than node's own makes those calls."""
    own = {name for name, _ in node.owners}
    owners = dict.fromkeys(next(((n, t) for n, t in u.owners if n not in own), ("", "")) for u in node.users)
    named = [f"{t} {n}" for n, t in owners if n]
    return f" in {', '.join(named)}" if named else ""


def _separable_chain(dw: _Node, unfolded: dict[str, str], calls: Counter, aliased: set[int]
                     ) -> tuple[list[_Node], str | None, str | None]:
    """From a depthwise conv: (the nodes up to and including the 1x1 conv, activation, None) when they fuse,
    else ([], None, why not). `unfolded` says why each BatchNorm left in the model was not folded. An
    activation without a fused kernel does not end the walk, so a reason also names what lies beyond it
    (MobileNetV3: Hardswish, then a squeeze-excitation block)."""
    chain, activation, node, problems = [dw], None, dw, []
    while True:
        if len(node.users) != 1:
            users = ", ".join(u.describe() for u in node.users)
            problems.append(f"the output of {node.name} has {len(node.users)} users ({users}){_users_context(node)}; "
                            "the intermediate must feed only the 1x1 conv")
            break
        node = node.users[0]
        m = node.module
        if m is not None and (calls[id(m)] != 1 or id(m) in aliased):
            problems.append(f"{node.describe()} is called {calls[id(m)]} times (or shared): fusing would remove "
                            "its other uses")
            break
        chain.append(node)
        if _is_pointwise(m):
            break
        if isinstance(m, _BATCHNORMS) and node.name not in unfolded and len(chain) == 2:
            continue  # folded into the depthwise conv
        if isinstance(m, _BATCHNORMS):
            problems.append(f"{node.describe()} between them is not folded: "
                            + unfolded.get(node.name, "it does not directly follow the depthwise conv"))
            break
        if isinstance(m, nn.Identity):
            continue
        if m is not None and type(m).__module__ == nn.ReLU.__module__ and activation is None:
            activation = _activation_name(m) or ""
            if not activation:
                problems.append(f"{node.describe()} has no fused kernel (fused: ReLU, ReLU6, SiLU, GELU with "
                                "approximate='none')")
            continue
        following = _following(node)
        problems.append(f"followed by {node.describe()}" + (f" -> {following}" if following else "")
                        + ", not [BatchNorm] -> [activation] -> an unpadded stride-1 1x1 Conv2d")
        break
    if problems:
        return [], None, "; ".join(problems)
    return chain, activation, None


def _fuse(chain: list[_Node], activation: str | None) -> DepthwiseSeparableConv2d:
    """The fused module for depthwise conv chain[0] and 1x1 conv chain[-1], sharing their parameters."""
    dw, pw = chain[0].module, chain[-1].module
    fused = DepthwiseSeparableConv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding,
                                     dw.dilation, bias=False, activation=activation)
    fused.depthwise_weight, fused.pointwise_weight = dw.weight, pw.weight
    fused.depthwise_bias, fused.pointwise_bias = dw.bias, pw.bias
    return fused


# ---------------------------------------------------------------------------------------------------------
# Module replacement and convert.
# ---------------------------------------------------------------------------------------------------------

def _convertible_conv(module: nn.Conv2d) -> str | None:
    """Why `module` cannot run on our kernels, or None when it can."""
    if type(module) is not nn.Conv2d:
        return f"a subclass ({type(module).__name__}) may change forward"
    if module.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return (f"dtype {module.weight.dtype} is not supported (float32, float16, bfloat16: cast the model with "
                "model.float() before convert)")
    return None


def _replacement(module: nn.Module) -> tuple[nn.Module | None, str | None]:
    """Our module for a torch module, sharing its parameters, or (None, why not)."""
    if isinstance(module, nn.Conv2d):
        why = _convertible_conv(module)
        if why:
            return None, why
        cls = Conv2d
    elif type(module) is nn.MaxPool2d:
        cls = MaxPool2d
    elif type(module) in (nn.Dropout, nn.Dropout2d):
        if module.inplace:
            return None, "inplace=True is not supported"
        cls = Dropout if type(module) is nn.Dropout else SpatialDropout2d
    else:
        return None, None
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()  # same parameters, buffers, hooks and attributes
    return new, None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def convert(model: nn.Module, *, fold_batchnorm: bool = False, fuse_separable: bool = False,
            verbose: bool = False) -> nn.Module:
    """Replace, in place, the modules of `model` that tritonconv runs, and return the model.

    `nn.Conv2d` (dilated, grouped, depthwise, 1x1; any padding mode) becomes `tritonconv.nn.Conv2d`,
    `nn.MaxPool2d` becomes `MaxPool2d`, `nn.Dropout`/`nn.Dropout2d` become `Dropout`/`SpatialDropout2d`:
    subclasses sharing the original's parameters, so `state_dict` keys and `isinstance` checks stay.
    Subclasses of those modules and in-place dropouts are left, with the reason. The model's own class is unchanged.

    Options (both change the module tree, so the touched modules' `state_dict` keys change):
    - fold_batchnorm: fold each eval-mode BatchNorm2d whose input is an nn.Conv2d's output (and that
      output's only use) into that conv's weight and bias; the BatchNorm becomes nn.Identity. For
      inference: a model in training mode folds nothing.
    - fuse_separable: replace each depthwise conv -> [BatchNorm, folded] -> [ReLU/ReLU6/SiLU/GELU module] ->
      unpadded stride-1 1x1 conv, whose intermediates have no other user, with one
      `DepthwiseSeparableConv2d` in the depthwise conv's place (the rest become nn.Identity).

    Both follow the dataflow of `forward` (see the module docstring). The report (`ConversionReport`)
    names every module replaced or left, every BatchNorm folded or not and every depthwise conv fused or
    not, each with its reason; it is stored as `model.tritonconv_report` and printed when `verbose`.
    """
    report = ConversionReport()
    if fold_batchnorm or fuse_separable:
        _fold_and_fuse(model, fold_batchnorm, fuse_separable, report)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new, why = _replacement(child)
            full = _join(parent_name, child_name)
            if new is not None:
                setattr(parent, child_name, new)
                report.replaced.append((full, type(child).__name__, f"tritonconv.nn.{type(new).__name__}"))
            elif why is not None:
                report.left.append((full, type(child).__name__, why))
    model.tritonconv_report = report
    if verbose:
        print(report)
    return model


def _fold_and_fuse(model: nn.Module, fold_batchnorm: bool, fuse_separable: bool, report: ConversionReport) -> None:
    """Find the folds and fusions in the model's dataflow, report each, then rewrite the module tree."""
    graphs = _dataflow(model, "", report.notes)
    nodes = [node for graph in graphs for node in graph]
    calls = Counter(id(node.module) for node in nodes if node.module is not None)
    names = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    aliased = {key for key, count in names.items() if count > 1}
    by_module: dict[int, list[_Node]] = {}
    for node in nodes:
        if node.module is not None:
            by_module.setdefault(id(node.module), []).append(node)
    folds = []
    if fold_batchnorm:
        for name, bn in model.named_modules():
            if isinstance(bn, _BATCHNORMS):
                conv, why = _fold_blocker(by_module.get(id(bn), []), calls, aliased)
                if conv is None:
                    report.not_folded.append((name, why))
                else:
                    folds.append((name, bn, conv))
                    report.folded.append((name, conv.name))
        if model.training and report.not_folded and not report.folded:
            report.notes.append("the model is in training mode, so no BatchNorm was folded: call model.eval() "
                                "before convert(fold_batchnorm=True)")
    fusions = []
    if fuse_separable:
        unfolded = dict(report.not_folded) if fold_batchnorm else {
            name: "pass fold_batchnorm=True" for name, m in model.named_modules() if isinstance(m, _BATCHNORMS)}
        for node in nodes:
            if _is_depthwise(node.module):
                chain, activation, why = _separable_chain(node, unfolded, calls, aliased)
                if why is not None:
                    report.not_fused.append((node.name, why))
                else:
                    fusions.append((chain, activation))
                    report.fused.append((node.name, " -> ".join(n.describe() for n in chain[1:])))
    for name, bn, conv in folds:
        _fold_batchnorm(conv.module, bn)
        _set(model, name, nn.Identity())
    for chain, activation in fusions:
        _set(model, chain[0].name, _fuse(chain, activation))
        for node in chain[1:]:
            _set(model, node.name, nn.Identity())
