"""Explaining TorchScript models, whose compiled graphs do not run Python hooks.

How: the model's ``forward`` graph is inlined; each inlined node remembers which submodule it came
from (``Node.getModuleHierarchy``). The target layer's output is the value produced inside that
submodule's scope and used outside it. A copy of the graph returns ``(logits, activation)``, compiled
into a function called with the model itself. Gradients then flow from the score to that activation
through TorchScript's autograd. Unlike the eager path, autograd records the backbone too (the input
is marked as requiring grad, weights stay frozen), so this path is slower, not different.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

_SEGMENT = re.compile(r"(?:^|\.)([^.()]+)\([^()]*\)")


def _scope(node: torch._C.Node) -> str:
    """Dotted module path of an inlined node.

    Scripted: 'SELF(ResNet).layer4(Sequential).1(BasicBlock)'; traced: 'layer4(Sequential).1(BasicBlock)'.
    Both give 'layer4.1'.
    """
    try:
        hierarchy = node.getModuleHierarchy()
    except RuntimeError:
        return ""
    names = []
    for name in _SEGMENT.findall(hierarchy or ""):
        if name == "UNKNOWN_INSTANCE":
            break
        if name != "SELF":
            names.append(name)
    return ".".join(names)


def _inside(scope: str, layer: str) -> bool:
    return scope == layer or scope.startswith(layer + ".")


def _escaping_tensor(graph: torch._C.Graph, layer: str) -> torch._C.Value:
    """The tensor value computed inside ``layer``'s scope and consumed outside it (its output)."""
    found = []
    for node in graph.nodes():
        if not _inside(_scope(node), layer):
            continue
        for value in node.outputs():
            if not isinstance(value.type(), torch._C.TensorType):
                continue
            if any(not _inside(_scope(use.user), layer) for use in value.uses()):
                found.append(value)
    if not found:
        raise KeyError(f"target layer {layer!r} not found in the TorchScript graph")
    return found[-1]


def _detach_downstream(graph: torch._C.Graph, value: torch._C.Value) -> None:
    """Route every later use of ``value`` through a clone, so in-place ops downstream (DenseNet's
    ``relu_``) modify the copy and ``value`` stays the layer's own output, as in the eager path."""
    none = graph.insertConstant(None)
    none.node().moveAfter(value.node())
    clone = graph.create("aten::clone", [value, none])
    clone.insertAfter(none.node())
    clone.output().setType(value.type())
    for use in list(value.uses()):
        if use.user is not clone:
            use.user.replaceInput(use.offset, clone.output())


def forward_with_activation(model: torch.jit.ScriptModule, layer: str) -> Callable[[torch.Tensor], tuple]:
    """A function ``x -> (logits, the layer's output)`` for a scripted or traced model."""
    graph = model.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    activation = _escaping_tensor(graph, layer)
    _detach_downstream(graph, activation)
    ret = graph.return_node()
    logits = ret.inputsAt(0)
    outputs = [logits, activation]
    triple = graph.create("prim::TupleConstruct", outputs)
    triple.insertBefore(ret)
    triple.output().setType(torch._C.TupleType([v.type() for v in outputs]))
    ret.replaceInput(0, triple.output())
    fn = torch._C._create_function_from_graph(f"forward_with_{layer.replace('.', '_')}", graph)
    return lambda x: fn(model._c, x)


def top_level_layers(model: torch.jit.ScriptModule) -> list[str]:
    return [name for name, _ in model.named_children()]
