"""Explaining the ONNX file that ships, not a re-export of it.

Design: onnxruntime runs the shipped graph with the target layer's output exposed as an extra graph
output (the backbone is never re-implemented). The *head* — the subgraph from that activation to the
logits — is cut out of the same file (``onnx.utils.Extractor``) and converted to torch with
``onnx2torch``, which gives the gradient of the class score with respect to the activation. Any head
those ops can express works (global pooling + linear, 1x1-conv classifiers, MLPs), not only GAP-linear.

Layer names: torch's exporter names nodes by module path (``/layer4/layer4.1/relu_1/Relu``), so a
module name (``layer4``) selects the tensor produced inside that scope and consumed outside it; a raw
tensor name is accepted too. The model runs on CPU through onnxruntime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import torch
from torch import nn

_CONVERTING = threading.Lock()
LeafForward = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


def _prefix(layer: str) -> str:
    """Module path 'features.8' -> exporter scope '/features/features.8/'."""
    parts = layer.split(".")
    return "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"


def _register_identity_versions() -> None:
    """onnx2torch 1.5 converts Identity up to opset 16; versions 19-25 only widen the allowed types,
    so the same (copying) converter is exact for them. Registered through onnx2torch's own registry."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter

    known = OperationDescription(domain="", operation_type="Identity", version=16)
    for version in (19, 21, 23, 24, 25):
        if OperationDescription(domain="", operation_type="Identity", version=version) not in _CONVERTER_REGISTRY:
            add_converter(operation_type="Identity", version=version)(_CONVERTER_REGISTRY[known])


def _fold_constant_identities(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Identity(initializer)`` nodes (the exporter's way to share weights) by initializers:
    ``onnx.utils.Extractor`` would otherwise leave the head without those weights."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return out


class OnnxModel:
    """A classifier in an ONNX file: callable on torch tensors (logits), explainable by layer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.proto = onnx.shape_inference.infer_shapes(onnx.load(str(self.path)))
        graph = self.proto.graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) < 1:
            raise ValueError(f"{self.path}: expected one image input and a logits output")
        self.input_name = inputs[0].name
        self.output_name = graph.output[0].name
        batch = inputs[0].type.tensor_type.shape.dim[0]
        self.fixed_batch = batch.dim_value if batch.HasField("dim_value") else None
        self._sessions: dict[tuple[tuple[str, ...], bool], ort.InferenceSession] = {}
        self._heads: dict[str, nn.Module] = {}
        self.training = False

    # -- nn.Module-like surface used by the pipeline
    def eval(self) -> OnnxModel:
        return self

    def to(self, device: str) -> OnnxModel:
        if device != "cpu":
            raise ValueError("ONNX models run on CPU through onnxruntime")
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def _session(self, extra: tuple[str, ...], backbone: bool = False) -> ort.InferenceSession:
        """A session computing the logits plus the ``extra`` tensors, or with ``backbone`` only the
        ``extra`` tensors (the graph cut after them: the head then runs once, in torch, not twice)."""
        key = (extra, backbone)
        if key not in self._sessions:
            if backbone:
                proto = onnx.utils.Extractor(_fold_constant_identities(self.proto)).extract_model(
                    [self.input_name], list(extra)
                )
            else:
                proto = onnx.ModelProto()
                proto.CopyFrom(self.proto)
                for name in extra:
                    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # As many threads as torch uses (explain.threads), not onnxruntime's default of every core:
            # parallel workers would otherwise each claim the whole machine.
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            # onnxruntime's idle threads spin waiting for work and take the cores from torch, which runs
            # the head and the gradients between its calls: off, the demo network's Grad-CAM ran in about
            # half the time (issue 12). Scheduling only: the arithmetic is the same.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            self._sessions[key] = ort.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[key]

    def _run(self, x: torch.Tensor, extra: tuple[str, ...] = (), backbone: bool = False) -> list[np.ndarray]:
        session = self._session(extra, backbone)
        names = list(extra) if backbone else [self.output_name, *extra]
        arr = x.detach().cpu().numpy().astype(np.float32)
        if self.fixed_batch == 1 and arr.shape[0] > 1:  # a graph exported for one image at a time
            parts = [session.run(names, {self.input_name: arr[i : i + 1]}) for i in range(arr.shape[0])]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]
        return session.run(names, {self.input_name: arr})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(x)[0])

    # -- layers
    def tensor_of(self, layer: str) -> str:
        """The graph tensor a layer name refers to (a tensor name, or a module path's output)."""
        graph = self.proto.graph
        produced = {o for n in graph.node for o in n.output}
        if layer in produced:
            return layer
        prefix = _prefix(layer)
        consumers: dict[str, list[str]] = {}
        for node in graph.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node.name)
        outputs = {o.name for o in graph.output}
        escaping = [
            out
            for node in graph.node
            if node.name.startswith(prefix)
            for out in node.output
            if out in outputs or any(not c.startswith(prefix) for c in consumers.get(out, []))
        ]
        if not escaping:
            raise KeyError(f"target layer {layer!r} not found in {self.path.name} (no node named {prefix}...)")
        return escaping[-1]

    def top_level_layers(self) -> list[str]:
        seen: list[str] = []
        for node in self.proto.graph.node:
            parts = node.name.split("/")
            if len(parts) > 2 and parts[1] and parts[1] not in seen:
                seen.append(parts[1])
        return seen

    def top_level_shapes(self, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
        """(module, output shape) for each top-level module scope, in graph order."""
        candidates = []
        for layer in self.top_level_layers():
            try:
                candidates.append((layer, self.tensor_of(layer)))
            except KeyError:
                continue
        if not candidates:
            raise ValueError(f"{self.path.name}: no module scopes in node names; name a target tensor")
        tensors = tuple(dict.fromkeys(t for _, t in candidates))
        shapes = dict(zip(tensors, (v.shape for v in self._run(example, tensors)[1:]), strict=True))
        return [(layer, tuple(shapes[t])) for layer, t in candidates]

    def head(self, tensor: str) -> nn.Module:
        """The subgraph from ``tensor`` to the logits, as a differentiable torch module."""
        with _CONVERTING:  # onnx2torch's converter registry is global: one conversion at a time
            return self._head(tensor)

    def _head(self, tensor: str) -> nn.Module:
        if tensor not in self._heads:
            from onnx2torch import convert

            _register_identity_versions()
            sub = onnx.utils.Extractor(_fold_constant_identities(self.proto)).extract_model(
                [tensor], [self.output_name]
            )
            head = convert(sub).eval()
            for p in head.parameters():  # gradients w.r.t. the activation only, never the weights
                p.requires_grad_(False)
            self._heads[tensor] = head
        return self._heads[tensor]

    def forward_with_activation(self, layer: str) -> LeafForward:
        """``(x, needs_grad) -> (logits, activation)``: the backbone up to the layer in onnxruntime, the
        head (which gives the logits and the gradient) in torch."""
        tensor = self.tensor_of(layer)
        head = self.head(tensor)

        def forward(x: torch.Tensor, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
            (activation,) = self._run(x, (tensor,), backbone=True)
            leaf = torch.from_numpy(activation).to(x.device).requires_grad_(needs_grad)
            with torch.set_grad_enabled(needs_grad):
                return head(leaf), leaf

        return forward
