"""Defects rendered into a product scene: each draws an :class:`Edit` of the scene."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from feddymem.data.generated.products.scene import (
    HOLE_CHAMFER,
    HOLE_RADIUS,
    N_HOLES,
    BoolArray,
    Edit,
    Scene,
    smooth_noise,
)

DEFECT_KINDS: tuple[str, ...] = ("scratch", "dent", "chunk", "stain", "missing_hole")
"""Defect kinds :func:`render_product` draws, also their ``test/<kind>`` folder names."""


def _bezier_mask(scene: Scene, rng: np.random.Generator, *, width: float) -> BoolArray:
    """A curved line of ``width`` px across the part's face, ``(H, W)``."""
    size = scene.size
    face_points = np.argwhere(scene.face)
    start = face_points[int(rng.integers(len(face_points)))].astype(np.float64)
    length = scene.radius_px * rng.uniform(0.3, 0.9)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    chord = length * np.array([math.sin(angle), math.cos(angle)])
    normal = np.array([chord[1], -chord[0]]) / length
    bends = rng.uniform(-0.25, 0.25, size=2) * length
    points = np.stack(
        [
            start,
            start + chord / 3.0 + normal * bends[0],
            start + 2.0 * chord / 3.0 + normal * bends[1],
            start + chord,
        ]
    )
    t = np.linspace(0.0, 1.0, math.ceil(3.0 * length) + 2)[:, None]
    weights = np.hstack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])
    curve = np.rint(weights @ points).astype(np.int64)
    inside = (curve >= 0).all(axis=1) & (curve < size).all(axis=1)
    seeds = np.ones((size, size), dtype=bool)
    seeds[curve[inside, 0], curve[inside, 1]] = False
    distance = ndimage.distance_transform_edt(seeds)
    return np.asarray(distance <= width / 2.0)


def _scratch(scene: Scene, rng: np.random.Generator) -> Edit:
    width = float(rng.uniform(1.0, 3.0))
    line = _bezier_mask(scene, rng, width=width) & scene.face
    sign = 1.0 if rng.random() < 0.5 else -1.0  # a glint or a groove
    depth = sign * rng.uniform(0.15, 0.45)
    return Edit(footprint=line, shade=np.where(line, depth, 0.0))


def _dent(scene: Scene, rng: np.random.Generator) -> Edit:
    face_points = np.argwhere(scene.face)
    cy, cx = face_points[int(rng.integers(len(face_points)))]
    sigma = scene.radius_px * rng.uniform(0.04, 0.09)
    height = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(1.2, 3.0)
    rows = np.arange(scene.size)[:, None] - cy
    cols = np.arange(scene.size)[None, :] - cx
    bump = height * np.exp(-(rows**2 + cols**2) / (2.0 * sigma**2))
    grad_y, grad_x = np.gradient(bump)
    # Shading of a surface bent by the bump: the side facing the light brightens.
    shade = -(grad_x * scene.light[0] + grad_y * scene.light[1]) * 1.2 - 0.04 * np.abs(bump)
    footprint = (np.abs(shade) > 0.02) & scene.face
    return Edit(footprint=footprint, shade=np.where(footprint, shade, 0.0))


def _irregular_blob(
    scene: Scene, rng: np.random.Generator, centre: tuple[float, float], radius: float
) -> BoolArray:
    """A star-shaped region with a wavy outline around ``centre`` (pixels), ``(H, W)``."""
    rows = np.arange(scene.size)[:, None] - centre[0]
    cols = np.arange(scene.size)[None, :] - centre[1]
    dist = np.hypot(rows, cols) / radius
    phi = np.arctan2(rows, cols)
    harmonics = np.arange(2, 7)
    amps = rng.uniform(0.0, 1.0, size=harmonics.size) / harmonics
    amps *= 0.35 / amps.sum()
    phases = rng.uniform(0.0, 2.0 * math.pi, size=harmonics.size)
    boundary = 1.0 + np.cos(harmonics * phi[..., None] + phases) @ amps
    return np.asarray(dist <= boundary)


def _chunk(scene: Scene, rng: np.random.Generator) -> Edit:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    # A point on the outer rim: part frame -> rotation -> camera tilt -> pixel indices.
    world = angle + scene.rotation
    cy = scene.centre[0] + math.sin(world) * scene.radius_px * scene.style.tilt
    cx = scene.centre[1] + math.cos(world) * scene.radius_px
    radius = scene.radius_px * rng.uniform(0.10, 0.22)
    notch = _irregular_blob(scene, rng, (cy, cx), radius) & scene.material
    return Edit(footprint=notch, remove=notch)


def _stain(scene: Scene, rng: np.random.Generator) -> Edit:
    face_points = np.argwhere(scene.face)
    cy, cx = face_points[int(rng.integers(len(face_points)))]
    radius = scene.radius_px * rng.uniform(0.07, 0.18)
    blob = _irregular_blob(scene, rng, (float(cy), float(cx)), radius) & scene.material
    rust = rng.random() < 0.5
    colour = (0.55, 0.30, 0.14) if rust else (0.16, 0.15, 0.17)
    alpha = rng.uniform(0.35, 0.75)
    mottle = 0.75 + 0.25 * smooth_noise((scene.size, scene.size), scale=4.0, rng=rng).clip(-1, 1)
    paint = np.where(blob, alpha * mottle, 0.0)
    return Edit(footprint=blob, paint_rgb=colour, paint_alpha=paint)


def _missing_hole(scene: Scene, rng: np.random.Generator) -> Edit:
    hole = int(rng.integers(N_HOLES))
    # The undrilled spot and its would-be chamfer become flat face.
    spot = (
        (scene.hole_index == hole)
        & (scene.hole_dist <= HOLE_RADIUS + HOLE_CHAMFER)
        & (scene.r <= 1.0)
    )
    return Edit(footprint=spot, drop_hole=hole)


DEFECTS = {
    "scratch": _scratch,
    "dent": _dent,
    "chunk": _chunk,
    "stain": _stain,
    "missing_hole": _missing_hole,
}
