"""ONNX export of a trained classifier for the agent, and its check against PyTorch.

This module owns the deployed graph: BatchNorm folded into the preceding convolutions, a final
Softmax so that the output "scores" holds probabilities in `LABELS` order, a fixed input
"frame" of shape [1, 1, 256, 320] (no dynamic axes), opset 13. After export the graph is
checked structurally and run with onnxruntime against the PyTorch model.
"""

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from defects import LABELS
from model import INPUT_SHAPE, SurfaceNet

OPSET = 13
INPUT_NAME = "frame"
OUTPUT_NAME = "scores"


class _Probabilities(nn.Module):
    """A classifier followed by a softmax over its logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x), dim=1)


def deployable(model: SurfaceNet) -> nn.Module:
    """An evaluation-mode copy of `model` with BatchNorm folded into its convolutions and a softmax on top."""
    folded = copy.deepcopy(model).eval()
    layers = list(folded.features)
    fused: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            fused.append(fuse_conv_bn_eval(layer, layers[i + 1]))
            i += 2
        else:
            fused.append(layer)
            i += 1
    folded.features = nn.Sequential(*fused)
    return _Probabilities(folded).eval()


def export_onnx(model: SurfaceNet, path: Path) -> None:
    """Writes the deployable form of `model` to `path` as ONNX and checks the graph."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        deployable(model),
        (torch.zeros(INPUT_SHAPE),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = {node.op_type for node in graph.graph.node}
    if "BatchNormalization" in ops or ops.isdisjoint({"Softmax"}):
        raise RuntimeError(f"unexpected operators in the exported graph: {sorted(ops)}")
    _check_io(graph)


def _check_io(graph: onnx.ModelProto) -> None:
    """Fails unless the graph has exactly the fixed input and output the manifest names."""
    def shape_of(value: onnx.ValueInfoProto) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: shape_of(v) for v in graph.graph.input}
    outputs = {v.name: shape_of(v) for v in graph.graph.output}
    if inputs != {INPUT_NAME: list(INPUT_SHAPE)} or outputs != {OUTPUT_NAME: [1, len(LABELS)]}:
        raise RuntimeError(f"exported graph has inputs {inputs} and outputs {outputs}")


def onnx_session(path: Path) -> onnxruntime.InferenceSession:
    """A single-threaded onnxruntime session on the CPU for the model at `path`."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_scores(session: onnxruntime.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """Scores (N, labels) of normalised inputs (N, 1, 256, 320), run one frame at a time."""
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in inputs.astype(np.float32)])


def max_difference_to_torch(model: SurfaceNet, path: Path, inputs: np.ndarray) -> float:
    """Largest absolute score difference between the ONNX file and PyTorch on `inputs`."""
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(inputs)), dim=1).numpy()
    return float(np.abs(onnx_scores(onnx_session(path), inputs) - expected).max())
