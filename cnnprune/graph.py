"""Any traceable CNN as the native engine's plan: the model's ``torch.fx`` graph, BatchNorm
folded, activations and residual adds fused into the convolution before them, each node
mapped to a native operation or kept as a PyTorch one.

What runs natively (``GraphOp.kind``):

- ``conv``: a convolution (any groups, dilation 1, square kernel and padding — a padding wider
  than the layout's one-pixel border reads a copy with a wider one —, stride 1, or stride 2 on
  an even map), with the BatchNorm after it folded in, and fused after it: an activation (one
  of ``activations.ACTS``), or a residual add (then optionally ReLU), when it is their only input of that
  kind. It then runs as the engine's per-layer choice of
  sparse kernel, Winograd or dense oneDNN (:mod:`cnnprune.engine`).
- ``maxpool``: 3×3 stride-2 padding-1 max pooling of an even, non-negative map (the zero
  border stands for -inf only where every value is ≥ 0), after a native op or a PyTorch one.
- ``scale``: a native map times per-channel (C, 1, 1) factors (the gate of a
  squeeze-and-excitation block), read from the native convolution that made them or copied
  from PyTorch, so that the map stays in the padded layout.
- ``avgpool``: global average pooling (``AdaptiveAvgPool2d(1)`` or the function) of a native map.
- ``linear``: a ``Linear`` layer reading a native global average pool through a flatten, or
  another native ``Linear``, with the activation after it fused: the classifier of ResNets and
  MobileNets. Dropouts and stochastic depth, the identity in eval
  mode, are removed from the graph first (``_drop_identities``).

Grouped convolutions (depthwise ones included) run as the block diagonal of the equivalent dense
convolution: the sparse kernel only ever touches its nonzeros. Everything else — other pooling,
other linear layers, concatenation, attention, layer norms — is a ``torch`` op: it runs in
PyTorch between native segments, on tensors converted from and to the native layout, so the
plan is always correct; ``why`` says what kept it there (``plan_summary``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from cnnprune.activations import activation, apply_activation
from cnnprune.channels import remove_dead_channels
from cnnprune.errors import CnnpruneError
from cnnprune.fold import BN_EPS, Csr, FoldedConv
from cnnprune.plan import NONNEG_ACTS, Graph, GraphOp


def _is_module(node: fx.Node, modules: dict, kinds) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], kinds)


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)
            and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args))


def _global_avgpool(node: fx.Node, module: nn.Module | None) -> bool:
    """``AdaptiveAvgPool2d`` to 1×1, as a module or a function (MobileNetV2 calls the function)."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    return False


def _is_flatten(node: fx.Node, module: nn.Module | None) -> bool:
    """A flatten from dimension 1 to the end (function, method or module)."""
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    call = (node.op == "call_function" and node.target is torch.flatten) or \
        (node.op == "call_method" and node.target == "flatten")
    if not call or len(node.args) > 3:
        return False
    bound = dict(zip(("input", "start_dim", "end_dim"), node.args)) | dict(node.kwargs)  # by position or keyword
    return set(bound) <= {"input", "start_dim", "end_dim"} and bound.get("start_dim", 0) == 1 \
        and bound.get("end_dim", -1) == -1


def _channel_scale(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(map, factors) where ``node`` multiplies a (C, H, W) map by (C, 1, 1) factors per image,
    in either order (a squeeze-and-excitation gate), else None."""
    if node.op != "call_function" or node.target not in (operator.mul, torch.mul) or node.kwargs \
            or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    a, b = node.args
    for x, s in ((a, b), (b, a)):
        shape, factors = _shape(x), _shape(s)
        if len(shape) == 3 and factors == (shape[0], 1, 1) and _shape(node) == shape:
            return x, s
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def fold_conv(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, native: bool = True) -> FoldedConv:
    """The convolution with ``bn`` (eval statistics) folded in, float32 numpy, zeros kept; a
    grouped one that runs natively as the block diagonal of a dense one (``_block_diagonal``)."""
    w = conv.weight.detach().float().numpy()
    bias = conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(w.shape[0], np.float32)
    if bn is not None:
        eps = np.float32(bn.eps if bn.eps is not None else BN_EPS)
        scale = bn.weight.detach().float().numpy() / np.sqrt(bn.running_var.detach().float().numpy() + eps)
        bias = bn.bias.detach().float().numpy() + (bias - bn.running_mean.detach().float().numpy()) * scale
        w = w * scale.reshape(-1, 1, 1, 1)
    padding = conv.padding[0] if isinstance(conv.padding, tuple) else -1
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if native and conv.groups > 1:
        return FoldedConv(name, _block_diagonal(w.astype(np.float32), conv.groups), bias, conv.stride[0], padding,
                          (w.shape[0], conv.in_channels, *w.shape[2:]))
    return FoldedConv(name, np.ascontiguousarray(w, dtype=np.float32), bias, conv.stride[0], padding)


def _block_diagonal(w: np.ndarray, groups: int) -> Csr:
    """A grouped weight (Cout, Cin/g, k, k) as the CSR of the (Cout, Cin·k·k) matrix of the
    equivalent dense convolution: output channel o of group o // (Cout/g) reads only that group's
    input channels, so row o holds its nonzero taps at columns (first input channel of its group +
    i)·k·k + tap. Depthwise (g = Cin = Cout): the diagonal, k·k nonzeros per output channel, each
    reading its own input channel."""
    cout, cin_g, kh, kw = w.shape
    flat = w.reshape(cout, cin_g * kh * kw)
    rows, cols = np.nonzero(flat)
    first = (rows // (cout // groups)) * cin_g  # the first input channel of each row's group
    indptr = np.zeros(cout + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(np.bincount(rows, minlength=cout))
    return Csr(indptr, (first * kh * kw + cols).astype(np.int32), np.ascontiguousarray(flat[rows, cols]))


def conv_why(conv: nn.Conv2d, hin: int, win: int) -> str:
    """Why the native kernels cannot run this convolution ("" where they can). Any padding: a
    convolution padded by p > 1 reads its input with a p-pixel border (the packed model input
    where it is the widest reader, else a copy, ``graph_engine._Program.padded``)."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if isinstance(p, str) or conv.padding_mode != "zeros" or conv.dilation != (1, 1):
        return "padding mode or dilation"
    if k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
        return "non-square kernel, stride or padding"
    if s[0] not in (1, 2):
        return f"stride {s[0]}"
    if s[0] == 2 and (hin % 2 or win % 2):
        return "stride 2 on an odd map"
    return ""


def _torch_fn(node: fx.Node, modules: dict) -> Callable[..., object]:
    """A callable evaluating ``node`` on its input values, passed in ``node.all_input_nodes`` order."""
    order = list(node.all_input_nodes)

    def call(*values):
        env = dict(zip(order, values))
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise CnnpruneError(f"graph node {node.name}: op {node.op} cannot run")
    return call


def _folded_torch(conv: FoldedConv, module: nn.Conv2d, act: str) -> Callable[..., torch.Tensor]:
    """A convolution the kernels cannot run, BatchNorm folded, in PyTorch: x [, residual] -> y."""
    w, b = torch.from_numpy(conv.weight), torch.from_numpy(conv.bias)

    def call(x: torch.Tensor, res: torch.Tensor | None = None) -> torch.Tensor:
        y = F.conv2d(x, w, b, module.stride, module.padding, module.dilation, module.groups)
        if res is not None:
            y += res
        return apply_activation(y, act)
    return call


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else ()


class _Builder:
    """The walk over the traced graph that makes a :class:`Graph` (``trace``)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.ops: list[GraphOp] = []
        self.pending: dict[fx.Node, GraphOp] = {}  # fused ops, emitted where their last node was
        self.absorbed: set[fx.Node] = set()
        self.alias: dict[fx.Node, fx.Node] = {}
        self.native: set[str] = set()  # values that native ops write
        self.nonneg: set[str] = set()
        self.flat: set[str] = set()  # native (N, C) values: outputs of global average pools and linear layers
        self.by_name = {n.name: n for n in gm.graph.nodes}

    def value(self, node: fx.Node) -> str:
        while node in self.alias:
            node = self.alias[node]
        return node.name

    def conv(self, node: fx.Node) -> None:
        module = self.modules[node.target]
        tail, bn = node, None
        user = _only_user(node)
        if user is not None and _is_module(user, self.modules, nn.BatchNorm2d) and not self.modules[user.target].training:
            tail, bn = user, self.modules[user.target]
        act, residual, fused = "none", None, [tail]
        user = _only_user(tail)
        if user is not None and activation(user, self.modules):
            act, fused = activation(user, self.modules), fused + [user]
        elif user is not None and _is_add(user) and user not in self.absorbed and _shape(user) == _shape(tail):
            other = user.args[1] if user.args[0] is tail else user.args[0]
            residual, fused = (other, fused + [user]) if other is not tail else (None, fused)
            after = _only_user(user)
            if residual is not None and after is not None and activation(after, self.modules) == "relu":
                act, fused = "relu", fused + [after]
        self.absorbed.update(fused)
        hin, win = _shape(node.args[0])[1:3]
        why = conv_why(module, hin, win)
        folded = fold_conv(node.target, module, bn, native=not why)
        last = fused[-1]
        op = GraphOp("conv" if not why else "torch", node.target, [self.value(node.args[0])], last.name, _shape(last),
                     conv=folded, act=act, why=why, nonneg=act in NONNEG_ACTS,
                     fused=[n.name for n in fused if n is not node], in_shape=_shape(node.args[0]),
                     grouped=module.groups > 1 and not why, border=max(1, module.padding[0]) if not why else 1)
        if residual is not None:
            op.residual = residual.name  # resolved when emitted
            op.inputs.append(residual.name)
        if why:
            op.fn = _folded_torch(folded, module, act)
        self.pending[last] = op
        if last is node:
            self.emit(node)

    def emit(self, node: fx.Node) -> None:
        op = self.pending.pop(node)
        op.inputs = [self.value_of_name(v) for v in op.inputs]
        if op.residual is not None:
            op.residual = op.inputs[-1]
        self.ops.append(op)
        if op.kind != "torch":
            self.native.add(op.output)
        if op.nonneg:
            self.nonneg.add(op.output)

    def value_of_name(self, name: str) -> str:
        return self.value(self.by_name[name])

    def _getter(self, target: str) -> Callable[[], object]:
        def fetch():
            obj = self.gm
            for part in target.split("."):
                obj = getattr(obj, part)
            return obj
        return fetch

    def other(self, node: fx.Node) -> None:
        module = self.modules.get(node.target) if node.op == "call_module" else None
        ins = [self.value(n) for n in node.all_input_nodes]
        shape = _shape(node)
        if isinstance(module, nn.MaxPool2d):  # native even after a PyTorch op: PyTorch's NCHW pool is slower than the conversion
            k, s, p = module.kernel_size, module.stride, module.padding
            c, h, w = _shape(node.args[0])
            if (k, s, p) in ((3, 2, 1), ((3, 3), (2, 2), (1, 1))) and module.dilation in (1, (1, 1)) \
                    and not module.ceil_mode and h % 2 == 0 and w % 2 == 0 and ins[0] in self.nonneg:
                self._add(GraphOp("maxpool", node.name, ins, node.name, shape, nonneg=True))
                return
        gated = _channel_scale(node)
        if gated is not None and self.value(gated[0]) in self.native:
            self._add(GraphOp("scale", node.name, [self.value(gated[0]), self.value(gated[1])], node.name, shape))
            return
        if _global_avgpool(node, module) and ins[0] in self.native:
            self._add(GraphOp("avgpool", node.name, ins[:1], node.name, shape))
            self.flat.add(node.name)
            return
        if _is_flatten(node, module) and ins[0] in self.flat and self._read_by_linear_only(node):
            self.alias[node] = node.args[0]  # the pool's (N, C) buffer is already flat
            return
        if isinstance(module, nn.Linear) and ins[0] in self.flat and len(_shape(node.args[0])) == 1:
            self._linear(node, module, ins)
            return
        what = type(module).__name__ if module is not None else getattr(node.target, "__name__", str(node.target))
        why = f"no native kernel for {what}" + (" with this geometry or a negative input" if isinstance(module, nn.MaxPool2d)
                                                 else " (its input comes from PyTorch)" if isinstance(module, nn.AdaptiveAvgPool2d)
                                                 else "")
        self._add(GraphOp("torch", node.name, ins, node.name, shape, fn=_torch_fn(node, self.modules), why=why,
                          nonneg=activation(node, self.modules) in NONNEG_ACTS))

    def _linear(self, node: fx.Node, module: nn.Linear, ins: list[str]) -> None:
        """A Linear reading a native flat value (a pool's, through a flatten, or another Linear's),
        with the activation after it fused (MobileNetV3's classifier: Linear, Hardswish, Linear)."""
        w = module.weight.detach().float().numpy()
        b = module.bias.detach().float().numpy() if module.bias is not None else np.zeros(w.shape[0], np.float32)
        user = _only_user(node)
        act = activation(user, self.modules) if user is not None else None
        last = user if act else node
        if act:
            self.absorbed.add(user)
        self._add(GraphOp("linear", node.target, ins, last.name, _shape(last), act=act or "none",
                          fused=[user.name] if act else [], nonneg=act in NONNEG_ACTS,
                          conv=FoldedConv(node.target, np.ascontiguousarray(w), np.ascontiguousarray(b), 1, 0)))
        self.flat.add(last.name)

    def _read_by_linear_only(self, node: fx.Node) -> bool:
        """Every reader of ``node`` is a ``Linear`` module (which then runs natively on the flat
        pool; any other reader would need the flattened tensor)."""
        readers = list(node.users)
        return bool(readers) and all(_is_module(user, self.modules, nn.Linear) for user in readers)

    def _add(self, op: GraphOp) -> None:
        self.ops.append(op)
        if op.kind != "torch":
            self.native.add(op.output)
        if op.nonneg:
            self.nonneg.add(op.output)

    def build(self, input_shape: tuple[int, int, int]) -> Graph:
        inp = out = None
        for node in self.gm.graph.nodes:
            if node in self.pending:
                self.emit(node)
            elif node in self.absorbed:
                continue
            elif node.op == "placeholder":
                if inp is not None:
                    raise CnnpruneError("the native engine runs models with one input")
                inp = node.name
            elif node.op == "output":
                out = node.args[0]
            elif _is_module(node, self.modules, nn.Conv2d):
                self.conv(node)
            elif node.op == "get_attr":
                self._add(GraphOp("torch", node.name, [], node.name, (), fn=self._getter(node.target), why="constant"))
            else:
                self.other(node)
        if not isinstance(out, fx.Node):
            raise CnnpruneError("the native engine runs models with one tensor output")
        return Graph(self.ops, inp, self.value(out), input_shape)


def trace(model: nn.Module, input_shape: tuple[int, int, int], dead_channels: bool = True) -> Graph:
    """The plan of ``model`` (eval mode) for inputs (N, *input_shape); one-line error if it cannot be
    traced. ``dead_channels``: take out the channels pruning left without effect
    (:func:`cnnprune.channels.remove_dead_channels`)."""
    model = model.eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # torch.fx raises many kinds, all meaning the same to the user
        raise CnnpruneError(f"the native engine could not trace {type(model).__name__} with torch.fx: "
                            f"{str(e).splitlines()[0][:160]}") from None
    _drop_identities(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    graph = _Builder(gm).build(input_shape)
    if dead_channels:
        graph.cuts = remove_dead_channels(graph)
    return graph


def _drop_identities(gm: fx.GraphModule) -> None:
    """Remove the nodes that are the identity in eval mode — dropouts, ``nn.Identity``,
    torchvision's stochastic depth (EfficientNet's, before its residual add) — so that what they
    stand between fuses (a residual add into the convolution before it, a classifier into the
    pool)."""
    from torchvision.ops import stochastic_depth

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        module = modules.get(node.target) if node.op == "call_module" else None
        dropout = isinstance(module, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity)) and not module.training
        depth = node.op == "call_function" and node.target is stochastic_depth and _eval_call(node, 3, "training")
        if (dropout or depth) and node.args:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()


def _eval_call(node: fx.Node, index: int, name: str) -> bool:
    """The call's ``training`` argument (position ``index`` or keyword ``name``) is False."""
    value = node.args[index] if len(node.args) > index else node.kwargs.get(name, True)
    return value is False
