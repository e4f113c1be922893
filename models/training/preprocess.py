"""The preprocessing defect-agent applies to a camera frame, reproduced bit for bit.

This module owns the path from a full 1280x1024 frame to the model input: the line camera's
JPEG encoding (quality 90) and its decoding, the area downscale by exactly 4 per axis to the
320x256 8-bit model-input image, and the normalisation into the float32 input tensor. It also
measures the per-frame input statistics of the bundle baseline (brightness and contrast, see
`models/MANIFEST.md`).
"""

import io

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
"""Quality the line camera writes its JPEG frames at."""

FACTOR = 4
"""Area downscale factor per axis, from camera resolution to model input."""

INPUT_HEIGHT, INPUT_WIDTH = 256, 320
"""Model input size in pixels."""

SCALE = 1.0 / 255.0
"""Factor applied to each 8-bit value before normalisation."""

MEAN = 0.38
"""Normalisation mean, from the training images (0-1 scale, rounded to 2 decimals)."""

STD = 0.2
"""Normalisation standard deviation, from the training images (0-1 scale, rounded to 2 decimals)."""


def jpeg_round_trip(frame: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The 8-bit gray frame after the camera's JPEG encoding and the agent's decoding."""
    return decode_jpeg(encode_jpeg(frame, quality))


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an 8-bit gray frame, as the line camera writes them."""
    buffer = io.BytesIO()
    Image.fromarray(frame, mode="L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decodes JPEG bytes at full size into an 8-bit gray array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def area_downscale(frame: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """Mean of each `factor` x `factor` block, rounded half up to uint8."""
    h, w = frame.shape
    if h % factor or w % factor:
        raise ValueError(f"{w}x{h} frame is not a multiple of {factor} in both directions")
    blocks = frame.reshape(h // factor, factor, w // factor, factor).astype(np.uint32)
    area = factor * factor
    return ((blocks.sum(axis=(1, 3)) + area // 2) // area).astype(np.uint8)


def model_input_image(frame: np.ndarray) -> np.ndarray:
    """The 320x256 8-bit model-input image the agent makes from a raw 1280x1024 camera frame."""
    return area_downscale(jpeg_round_trip(frame))


def normalise(images: np.ndarray, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """Float32 model input from 8-bit images: x / 255, then (x - mean) / std.

    Accepts one image (H, W) or a batch (N, H, W) and returns NCHW with one channel.
    """
    batch = images if images.ndim == 3 else images[None]
    x = batch.astype(np.float32) * np.float32(SCALE)
    return ((x - np.float32(mean)) / np.float32(std))[:, None, :, :]


def brightness(image: np.ndarray) -> float:
    """Mean pixel value (0-255 scale) of an 8-bit model-input image."""
    return float(image.astype(np.float64).mean())


def contrast(image: np.ndarray) -> float:
    """Pixel standard deviation (0-255 scale) of an 8-bit model-input image."""
    return float(image.astype(np.float64).std())
