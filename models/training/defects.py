"""Surface defects: the class labels and how each defect looks on a part.

This module owns the defect vocabulary (`LABELS`, `DEFECTS`) and the rendering of one defect
as a local intensity change. A stamp is a small float32 patch of gray-level offsets placed at
a given pixel position of a 1280x1024 frame; the scene renderer adds it to the part surface
before lighting. Every stamp's contrast is tied to its size so that it stays visible after the
agent's 4x area downscale: thin marks are drawn with proportionally more contrast.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LABELS = ("good", "scratch", "dent", "crack", "stain")
"""Class labels in the model's output order."""

DEFECTS = LABELS[1:]
"""Labels that mean the part must be rejected."""

DOWNSCALE = 4
"""Camera pixels per model-input pixel along each axis."""


@dataclass(frozen=True)
class Stamp:
    """A defect's gray-level offsets, to be added to the frame with its top-left corner at (top, left)."""

    delta: np.ndarray
    top: int
    left: int


def render_defect(label: str, rng: np.random.Generator, center: tuple[float, float]) -> Stamp:
    """Draws the defect `label` centred near `center` (x, y in frame pixels)."""
    renderers = {"scratch": _scratch, "dent": _dent, "crack": _crack, "stain": _stain}
    if label not in renderers:
        raise ValueError(f"unknown defect label {label!r}; expected one of {DEFECTS}")
    return renderers[label](rng, center)


def defect_extent(label: str) -> float:
    """Largest distance in pixels from a defect's centre to any pixel it may touch."""
    return {"scratch": 215.0, "dent": 45.0, "crack": 220.0, "stain": 80.0}[label]


def _scratch(rng: np.random.Generator, center: tuple[float, float]) -> Stamp:
    """A thin straight or gently curved line, darker or brighter, tapering at both ends."""
    length = rng.uniform(80.0, 400.0)
    width = rng.uniform(1.0, 4.0)
    angle = rng.uniform(0.0, np.pi)
    bend = rng.uniform(-0.12, 0.12) * length
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(0.0, 1.0, int(length * 2) + 2)
    along = (t - 0.5)[:, None] * length * direction
    across = (4.0 * t * (1.0 - t))[:, None] * bend * normal
    points = np.asarray(center) + along + across
    strength = rng.uniform(16.0, 45.0) * DOWNSCALE / width
    sign = rng.choice([-1.0, 1.0])
    fade = np.clip(np.minimum(t, 1.0 - t) / 0.08, 0.0, 1.0)
    gain = fade * rng.uniform(0.75, 1.0) * (1.0 + 0.15 * np.sin(t * rng.uniform(3.0, 12.0)))
    return _stroke([(points, gain)], width, sign * min(strength, 170.0))


def _crack(rng: np.random.Generator, center: tuple[float, float]) -> Stamp:
    """A dark jagged line made of short kinked segments, with one to three branches."""
    length = rng.uniform(90.0, 300.0)
    width = rng.uniform(1.0, 2.5)
    main = _jagged_path(rng, length, rng.uniform(0.0, 2 * np.pi))
    main = main - main.mean(axis=0) + np.asarray(center)
    strokes = [(main, _taper(len(main)))]
    for _ in range(rng.integers(1, 4)):
        start = main[rng.integers(len(main) // 5, 4 * len(main) // 5)]
        heading = np.arctan2(*(main[-1] - main[0])[::-1])
        heading += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        branch = _jagged_path(rng, length * rng.uniform(0.2, 0.45), heading) + start
        strokes.append((branch, 0.85 * _taper(len(branch))))
    strength = rng.uniform(20.0, 45.0) * DOWNSCALE / width
    return _stroke(strokes, width, -min(strength, 170.0))


def _jagged_path(rng: np.random.Generator, length: float, heading: float) -> np.ndarray:
    """Densely sampled points (0.5 px apart) of a random walk of kinked segments, starting at 0."""
    vertices = [np.zeros(2)]
    travelled = 0.0
    while travelled < length:
        heading += rng.normal(0.0, 0.45)
        step = rng.uniform(4.0, 14.0)
        vertices.append(vertices[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        travelled += step
    pieces = [
        a + np.linspace(0.0, 1.0, int(np.hypot(*(b - a)) * 2) + 2)[:, None] * (b - a)
        for a, b in zip(vertices[:-1], vertices[1:])
    ]
    return np.concatenate(pieces)


def _taper(n: int) -> np.ndarray:
    """Per-point gain that thins a crack towards its far end."""
    return np.linspace(1.0, 0.55, n)


def _stroke(strokes: list[tuple[np.ndarray, np.ndarray]], width: float, amplitude: float) -> Stamp:
    """Rasterises polylines (points with per-point gain) as an antialiased line of `width` px."""
    points = np.concatenate([p for p, _ in strokes])
    gains = np.concatenate([np.broadcast_to(g, len(p)) for p, g in strokes])
    pad = int(np.ceil(width)) + 3
    left, top = np.floor(points.min(axis=0)).astype(int) - pad
    right, bottom = np.ceil(points.max(axis=0)).astype(int) + pad
    cols = np.round(points[:, 0]).astype(int) - left
    rows = np.round(points[:, 1]).astype(int) - top
    gain_at = np.zeros((bottom - top, right - left), np.float32)
    gain_at[rows, cols] = gains
    distance, (near_r, near_c) = ndimage.distance_transform_edt(gain_at == 0, return_indices=True)
    coverage = np.clip(width / 2.0 + 0.5 - distance, 0.0, 1.0)
    delta = ndimage.gaussian_filter((coverage * gain_at[near_r, near_c]).astype(np.float32), 0.5)
    return Stamp(delta * np.float32(amplitude), int(top), int(left))


def _dent(rng: np.random.Generator, center: tuple[float, float]) -> Stamp:
    """A small round depression lit from one side: one flank bright, the other dark, with a rim."""
    radius = rng.uniform(8.0, 30.0)
    half = int(np.ceil(radius * 1.6)) + 2
    cx, cy = center
    left, top = int(round(cx)) - half, int(round(cy)) - half
    y, x = np.mgrid[top : top + 2 * half + 1, left : left + 2 * half + 1].astype(np.float32)
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy) / radius + 1e-6
    # Radial slope of a bowl (inside) and of the raised rim around it.
    bowl = np.where(r < 1.0, 2.0 * r, 0.0)
    rim = -0.35 * 2.0 * (r - 1.0) / 0.3**2 * np.exp(-(((r - 1.0) / 0.3) ** 2))
    slope = bowl + rim
    light = rng.uniform(0.0, 2 * np.pi)
    facing = (dx * np.cos(light) + dy * np.sin(light)) / (r * radius)
    small_boost = np.clip(18.0 / radius, 1.0, 1.8)
    shading = rng.uniform(30.0, 60.0) * small_boost * slope * facing / 2.0
    pit = -rng.uniform(10.0, 40.0) * small_boost * np.clip(1.0 - r, 0.0, 1.0) ** 0.7
    return Stamp((shading + pit).astype(np.float32), top, left)


def _stain(rng: np.random.Generator, center: tuple[float, float]) -> Stamp:
    """An irregular soft-edged blob, darker or lighter, mottled inside, sometimes with a ring."""
    radius = rng.uniform(12.5, 60.0)
    half = int(np.ceil(radius * 1.45)) + 8
    cx, cy = center
    left, top = int(round(cx)) - half, int(round(cy)) - half
    y, x = np.mgrid[top : top + 2 * half + 1, left : left + 2 * half + 1].astype(np.float32)
    dx, dy = x - cx, y - cy
    phi = np.arctan2(dy, dx)
    outline = np.ones_like(phi)
    for k in range(2, 6):
        outline += rng.uniform(0.0, 0.3 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    edge = rng.uniform(0.08, 0.3) * radius
    inside = np.clip((radius * outline - np.hypot(dx, dy)) / edge + 0.5, 0.0, 1.0)
    mottle = ndimage.gaussian_filter(rng.standard_normal(inside.shape).astype(np.float32), 3.0)
    body = inside * (1.0 + rng.uniform(0.0, 2.5) * mottle)
    if rng.random() < 0.35:
        body += rng.uniform(0.3, 0.8) * inside * (1.0 - inside) * 4.0
    amplitude = rng.choice([-1.0, 1.0]) * rng.uniform(18.0, 50.0)
    return Stamp((amplitude * body).astype(np.float32), top, left)
