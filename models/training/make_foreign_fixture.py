"""A tiny "foreign" ONNX classifier and its test images, built with the onnx helper API alone.

This module owns the fixture under `models/testdata/foreign/` that exercises the parts of the
agent the shipped model does not: RGB input, bilinear resize, logits output and a two-label
vocabulary. The graph takes "input" [1, 3, 16, 16] NCHW float32 (pixels scaled to 0-1), takes
the mean of each colour channel (ReduceMean over H and W), flattens it and applies a Gemm with
fixed weights, giving "logits" [1, 2] for the labels ["ok", "red_defect"]:

    ok         = 0
    red_defect = 8 * red - 4 * green - 4 * blue - 2

so a clearly red image scores "red_defect" and gray or other images score "ok". No training is
involved. The script also writes the golden sample `golden/red.png` (16x16 RGB) and two test
frames, `red.jpg` and `gray.jpg` (64x48), and prints the golden sample's expected softmax scores
(from onnxruntime) and the input statistics that the hand-written `manifest.toml` records.

Usage: `python make_foreign_fixture.py`.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

OUT_DIR = Path(__file__).resolve().parent.parent / "testdata" / "foreign"
SIDE = 16
LABELS = ("ok", "red_defect")
WEIGHTS = np.array([[0.0, 0.0, 0.0], [8.0, -4.0, -4.0]], dtype=np.float32)
BIAS = np.array([0.0, -2.0], dtype=np.float32)
RED = (220, 24, 28)
GRAY = (128, 128, 128)


def build_model() -> onnx.ModelProto:
    """The brightness-rule graph, opset 13, checked."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["channel_means"], axes=[2, 3], keepdims=1),
        helper.make_node("Flatten", ["channel_means"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness-rule",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(LABELS)])],
        initializer=[numpy_helper.from_array(WEIGHTS, "weights"), numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="defect-agent")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def solid_image(color: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    """An 8-bit RGB image of one colour with a faint deterministic ripple, so it is not perfectly flat."""
    y, x = np.mgrid[0:height, 0:width]
    ripple = np.rint(3 * np.sin(x / 3.0) * np.cos(y / 4.0)).astype(np.int16)
    return np.clip(np.array(color, np.int16) + ripple[..., None], 0, 255).astype(np.uint8)


def softmax_scores(session: onnxruntime.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    """Softmax of the model's logits for a 16x16 RGB image, preprocessed as the manifest says."""
    x = (rgb.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1)[None]
    logits = session.run(["logits"], {"input": x})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def input_statistics(rgb: np.ndarray) -> tuple[float, float]:
    """Brightness and contrast of a model-input image: mean and standard deviation over all channels."""
    values = rgb.astype(np.float64)
    return float(values.mean()), float(values.std())


def main() -> None:
    """Writes the model, the golden sample and the test frames, and prints the manifest values."""
    (OUT_DIR / "golden").mkdir(parents=True, exist_ok=True)
    model_path = OUT_DIR / "brightness-rule.onnx"
    onnx.save(build_model(), str(model_path))
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    golden = solid_image(RED, SIDE, SIDE)
    Image.fromarray(golden, mode="RGB").save(OUT_DIR / "golden" / "red.png")
    golden = np.asarray(Image.open(OUT_DIR / "golden" / "red.png").convert("RGB"))
    expected = softmax_scores(session, golden)
    print(f"golden/red.png expected = [{expected[0]:.6f}, {expected[1]:.6f}]")

    for name, color in (("red", RED), ("gray", GRAY)):
        Image.fromarray(solid_image(color, 64, 48), mode="RGB").save(OUT_DIR / f"{name}.jpg", quality=90)
        decoded = Image.open(OUT_DIR / f"{name}.jpg").convert("RGB")
        small = np.asarray(decoded.resize((SIDE, SIDE), Image.Resampling.BILINEAR))
        scores = softmax_scores(session, small)
        bright, spread = input_statistics(small)
        print(
            f"{name}.jpg: scores {dict(zip(LABELS, np.round(scores, 4).tolist()))}, "
            f"brightness {bright:.1f}, contrast {spread:.1f}"
        )


if __name__ == "__main__":
    main()
