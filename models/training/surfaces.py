"""Synthetic camera frames of product surfaces, with or without one defect.

This module owns the scene: a flat part (plate) lying on a darker conveyor, its surface finish
(brushed, machined, glass-like or matte), harmless finish variation, lighting (gradients,
vignetting, a soft hot spot, exposure) and the camera (blur and sensor noise). Defects come
from `defects`. A frame is a pure function of `(seed, label)`: every random choice is drawn
from `np.random.default_rng(seed)`, so the same arguments always give the same pixels.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from defects import DEFECTS, LABELS, defect_extent, render_defect

WIDTH, HEIGHT = 1280, 1024
"""Camera resolution in pixels."""

FINISHES = ("brushed", "machined", "glass", "matte")
"""Surface finishes a part may have."""

_X = np.arange(WIDTH, dtype=np.float32)
_Y = np.arange(HEIGHT, dtype=np.float32)
_TEXTURE_SPAN = 1400
"""Side in pixels of the part-aligned square over which finish textures are tabulated."""
_NORMAL_LEVELS = special.ndtri((np.arange(256, dtype=np.float64) + 0.5) / 256).astype(np.float32)
"""256 equiprobable quantiles of the standard normal distribution, for fast Gaussian noise."""


@dataclass(frozen=True)
class Rendered:
    """A rendered frame and where its defect is.

    `defect_box` is (top, left, bottom, right) in frame pixels, bottom and right exclusive,
    around the pixels the defect visibly changes; `None` for a good part.
    """

    pixels: np.ndarray
    defect_box: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class Part:
    """Where the plate lies: centre, rotation and half sizes in frame pixels."""

    cx: float
    cy: float
    angle: float
    half_width: float
    half_height: float
    corner: float

    def to_frame(self, u: float, v: float) -> tuple[float, float]:
        """Frame coordinates (x, y) of the part-aligned point (u, v)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.cx + u * c - v * s, self.cy + u * s + v * c


def render_frame(seed: int, label: str) -> np.ndarray:
    """Renders one 1280x1024 8-bit grayscale frame of a part showing `label` (see `LABELS`)."""
    return render(seed, label).pixels


def render(seed: int, label: str) -> Rendered:
    """Renders the frame of `render_frame` together with the box around its defect."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {LABELS}")
    rng = np.random.default_rng(seed)
    part = _place_part(rng)
    u, v = _part_coordinates(part)
    finish = FINISHES[rng.integers(len(FINISHES))]
    surface = _texture(finish, rng, u, v)
    surface *= _finish_variation(rng)
    surface += rng.uniform(60.0, 140.0) if finish == "glass" else rng.uniform(85.0, 175.0)
    box = _add_defect(surface, rng, part, label) if label in DEFECTS else None
    scene = _compose(rng, part, u, v, surface)
    return Rendered(_camera(rng, scene), box)


def _place_part(rng: np.random.Generator) -> Part:
    """Draws the plate's pose: a few tens of pixels off centre, a few degrees off square."""
    return Part(
        cx=WIDTH / 2 + rng.uniform(-40.0, 40.0),
        cy=HEIGHT / 2 + rng.uniform(-40.0, 40.0),
        angle=np.deg2rad(rng.uniform(-3.0, 3.0)),
        half_width=rng.uniform(530.0, 570.0),
        half_height=rng.uniform(410.0, 440.0),
        corner=rng.uniform(5.0, 60.0),
    )


def _part_coordinates(part: Part) -> tuple[np.ndarray, np.ndarray]:
    """Part-aligned coordinates (u along the long side, v across) of every frame pixel."""
    c, s = np.float32(np.cos(part.angle)), np.float32(np.sin(part.angle))
    dx = (_X - np.float32(part.cx))[None, :]
    dy = (_Y - np.float32(part.cy))[:, None]
    return dx * c + dy * s, dy * c - dx * s


def _texture(finish: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gray-level relief of the finish: offsets around the base level, in part coordinates."""
    if finish == "brushed":
        return _brushed(rng, u, v)
    if finish == "machined":
        return _machined(rng, u, v)
    if finish == "glass":
        return _glass(rng)
    return _matte(rng)


def _brushed(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Anisotropic streaks: fine lines of varying length along one side of the part."""
    along, across = (u, v) if rng.random() < 0.7 else (v, u)
    cell = 24.0
    grid = rng.standard_normal((_TEXTURE_SPAN, int(_TEXTURE_SPAN / cell) + 2), dtype=np.float32)
    grid = _unit(ndimage.gaussian_filter(grid, (rng.uniform(0.4, 0.9), 1.0)))
    lines = _unit(ndimage.gaussian_filter1d(rng.standard_normal(_TEXTURE_SPAN).astype(np.float32), 0.8))
    row = np.clip((across + _TEXTURE_SPAN / 2).astype(np.int32), 0, _TEXTURE_SPAN - 1)
    col_f = np.clip((along + _TEXTURE_SPAN / 2) / cell, 0.0, grid.shape[1] - 1.001)
    col = col_f.astype(np.int32)
    t = col_f - col
    flat = grid.ravel()
    index = row * grid.shape[1] + col
    first = flat.take(index)
    streaks = first + (flat.take(index + 1) - first) * t
    return streaks * np.float32(rng.uniform(3.0, 9.0)) + lines.take(row) * np.float32(rng.uniform(1.5, 5.0))


def _machined(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fine periodic tool marks, either concentric (turned) or parallel (milled)."""
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            ou, ov = rng.uniform(-200.0, 200.0), rng.uniform(-200.0, 200.0)
        else:
            far, bearing = rng.uniform(800.0, 2500.0), rng.uniform(0.0, 2 * np.pi)
            ou, ov = far * np.cos(bearing), far * np.sin(bearing)
        radius = np.hypot(u - np.float32(ou), v - np.float32(ov))
    else:
        radius = (v if rng.random() < 0.5 else u) + np.float32(_TEXTURE_SPAN / 2)
    reach = int(radius.max()) + 2
    r = np.arange(reach, dtype=np.float32)
    pitch = rng.uniform(2.5, 8.0)
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(reach).astype(np.float32), 30.0) * 40.0
    profile = (
        rng.uniform(2.0, 7.0) * np.sin(2 * np.pi * r / pitch + wobble)
        + rng.uniform(1.0, 4.0) * _unit(ndimage.gaussian_filter1d(rng.standard_normal(reach).astype(np.float32), 1.5))
    ).astype(np.float32)
    return np.interp(radius, r, profile).astype(np.float32)


def _glass(rng: np.random.Generator) -> np.ndarray:
    """Smooth surface with one or two soft reflection bands of the overhead lights."""
    relief = np.zeros((HEIGHT, WIDTH), np.float32)
    for _ in range(rng.integers(1, 3)):
        bearing = rng.uniform(0.0, np.pi)
        centre, width = rng.uniform(-500.0, 500.0), rng.uniform(25.0, 160.0)
        across_x = (_X - WIDTH / 2) * np.float32(np.cos(bearing) / width) - np.float32(centre / width)
        across_y = (_Y - HEIGHT / 2) * np.float32(np.sin(bearing) / width)
        z = across_y[:, None] + across_x[None, :]
        relief += np.float32(rng.uniform(8.0, 35.0)) * np.exp(-(z * z))
    return relief


def _matte(rng: np.random.Generator) -> np.ndarray:
    """Fine isotropic grain."""
    grain = _unit(ndimage.gaussian_filter(_gaussian_noise(rng), rng.uniform(0.7, 1.5)))
    return grain * np.float32(rng.uniform(3.0, 8.0))


def _finish_variation(rng: np.random.Generator) -> np.ndarray | np.float32:
    """Harmless broad variation in how strongly the finish shows (factor around 1)."""
    if rng.random() < 0.4:
        return np.float32(1.0)
    return 1.0 + np.float32(rng.uniform(0.0, 0.35)) * _smooth_field(rng)


def _smooth_field(rng: np.random.Generator) -> np.ndarray:
    """A broad wavy field in about [-1, 1], wavelengths of several hundred pixels."""
    waves = 3
    wx = np.sin(2 * np.pi * _X[None, :] / rng.uniform(300.0, 1200.0, (waves, 1)) + rng.uniform(0, 2 * np.pi, (waves, 1)))
    wy = np.sin(2 * np.pi * _Y[:, None] / rng.uniform(300.0, 1200.0, (1, waves)) + rng.uniform(0, 2 * np.pi, (1, waves)))
    return (wy.astype(np.float32) @ wx.astype(np.float32)) / np.float32(waves)


def _add_defect(surface: np.ndarray, rng: np.random.Generator, part: Part, label: str) -> tuple[int, int, int, int]:
    """Adds one defect of class `label` at a random place well inside the part; returns its box."""
    margin = defect_extent(label)
    u = rng.uniform(-part.half_width + margin, part.half_width - margin)
    v = rng.uniform(-part.half_height + margin, part.half_height - margin)
    stamp = render_defect(label, rng, part.to_frame(u, v))
    h, w = stamp.delta.shape
    top, left = max(stamp.top, 0), max(stamp.left, 0)
    bottom, right = min(stamp.top + h, HEIGHT), min(stamp.left + w, WIDTH)
    delta = stamp.delta[top - stamp.top : bottom - stamp.top, left - stamp.left : right - stamp.left]
    surface[top:bottom, left:right] += delta
    rows, cols = np.nonzero(np.abs(delta) >= 0.2 * np.abs(delta).max())
    return top + int(rows.min()), left + int(cols.min()), top + int(rows.max()) + 1, left + int(cols.max()) + 1


def _compose(rng: np.random.Generator, part: Part, u: np.ndarray, v: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Places the lit part, with a bevel highlight and a drop shadow, on the darker conveyor."""
    softness = rng.uniform(0.8, 2.0)
    bevel = rng.uniform(-25.0, 40.0)
    conveyor = rng.uniform(12.0, 45.0)
    shadow = rng.uniform(0.2, 0.6)
    scene = surface.copy()
    for window in _border_windows(part):
        signed = _signed_distance(part, u[window], v[window])
        inside = np.clip(0.5 - signed / np.float32(softness), 0.0, 1.0)
        rim = np.float32(bevel) * np.exp(-(((signed + 4.0) / 2.5) ** 2))
        floor = np.float32(conveyor) * (1.0 - np.float32(shadow) * np.exp(-np.maximum(signed, 0.0) / 20.0))
        scene[window] = floor + inside * (surface[window] + rim - floor)
    return scene * _illumination(rng) + _hot_spot(rng)


def _border_windows(part: Part) -> list[tuple[slice, slice]]:
    """Frame regions that together cover every pixel less than 20 px inside the part's edge."""
    c, s = abs(np.cos(part.angle)), abs(np.sin(part.angle))
    reach_x = part.half_width * c - part.half_height * s - 20.0
    reach_y = part.half_height * c - part.half_width * s - 20.0
    x0, x1 = int(part.cx - reach_x), int(np.ceil(part.cx + reach_x))
    y0, y1 = int(part.cy - reach_y), int(np.ceil(part.cy + reach_y))
    full = slice(0, WIDTH)
    return [
        (slice(0, y0), full),
        (slice(y1, HEIGHT), full),
        (slice(y0, y1), slice(0, x0)),
        (slice(y0, y1), slice(x1, WIDTH)),
    ]


def _signed_distance(part: Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance in pixels to the part's rounded-rectangle outline, negative inside."""
    qx = np.abs(u) - np.float32(part.half_width - part.corner)
    qy = np.abs(v) - np.float32(part.half_height - part.corner)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - np.float32(part.corner)


def _illumination(rng: np.random.Generator) -> np.ndarray:
    """Multiplicative light falloff: linear gradients, vignetting and overall exposure."""
    x = (_X - WIDTH / 2) / (WIDTH / 2)
    y = (_Y - HEIGHT / 2) / (HEIGHT / 2)
    gx, gy = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)
    vignette = rng.uniform(0.05, 0.25)
    exposure = rng.uniform(0.8, 1.2)
    linear = (1.0 + gx * x)[None, :] + (gy * y)[:, None]
    radial = 1.0 - vignette * ((x * x)[None, :] + (y * y)[:, None]) / 2.0
    return exposure * linear * radial


def _hot_spot(rng: np.random.Generator) -> np.ndarray:
    """A soft additive glare where the light reflects towards the camera."""
    hx, hy = rng.uniform(0.0, WIDTH), rng.uniform(0.0, HEIGHT)
    sx, sy = rng.uniform(120.0, 350.0), rng.uniform(120.0, 350.0)
    strength = np.float32(rng.uniform(0.0, 40.0))
    fx = np.exp(-0.5 * ((_X - hx) / sx) ** 2).astype(np.float32)
    fy = np.exp(-0.5 * ((_Y - hy) / sy) ** 2).astype(np.float32)
    return strength * fy[:, None] * fx[None, :]


def _camera(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """Optics blur, contrast response, read and shot noise, and 8-bit quantisation."""
    image = ndimage.gaussian_filter(scene, rng.uniform(0.5, 1.0))
    pivot = np.float32(image.mean())
    image = (image - pivot) * np.float32(rng.uniform(0.85, 1.15)) + pivot
    noise = _gaussian_noise(rng)
    sigma = np.float32(rng.uniform(1.2, 3.0)) + np.float32(rng.uniform(0.08, 0.2)) * np.sqrt(np.maximum(image, 0.0))
    image += noise * sigma
    return np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)


def _gaussian_noise(rng: np.random.Generator) -> np.ndarray:
    """A frame of standard normal noise, drawn as one of 256 equiprobable quantiles per pixel."""
    return _NORMAL_LEVELS.take(rng.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8))


def _unit(values: np.ndarray) -> np.ndarray:
    """The values scaled to zero mean and unit standard deviation."""
    return (values - values.mean()) / (values.std() + 1e-6)
