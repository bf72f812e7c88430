"""The scene of one product image: part geometry, pose, light, belt and sensor, and its rendering.

A :class:`Scene` holds everything drawn for one image besides a defect; :func:`render_scene`
turns it into pixels, applying a defect's :class:`Edit` when given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

from feddymem.data.generated.products.factories import FactoryStyle

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# Part geometry in units of the outer radius R (part frame).
_BORE = 0.30
_BORE_CHAMFER = 0.06
_RIM_CHAMFER = 0.08
_HOLE_CIRCLE = 0.65
HOLE_RADIUS = 0.085
HOLE_CHAMFER = 0.03
N_HOLES = 6
_CHAMFER_TILT = math.radians(40.0)
_LIGHT_ELEVATION = math.radians(50.0)


@dataclass
class Edit:
    """Changes a defect makes to a scene, all ``(H, W)`` in image space (None: no change).

    ``remove`` takes material away (the belt shows), ``drop_hole`` leaves bolt hole number
    ``drop_hole`` undrilled, ``shade`` adds to the part's shading, ``paint_rgb`` /
    ``paint_alpha`` lay a colour over the part; ``footprint`` bounds every change before blur.
    """

    footprint: BoolArray
    remove: BoolArray | None = None
    drop_hole: int | None = None
    shade: FloatArray | None = None
    paint_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    paint_alpha: FloatArray | None = None


@dataclass
class Scene:
    """One drawn part pose, light and sensor: everything a rendering needs besides a defect."""

    style: FactoryStyle
    size: int
    # Image coordinates relative to the part centre, (H, W) pixels.
    dx: FloatArray
    dy: FloatArray
    # Part-frame distance from the centre in units of R (after undoing tilt and rotation).
    r: FloatArray
    centre: tuple[float, float]  # part centre in pixel indices (row, col)
    radius_px: float
    rotation: float
    hole_index: npt.NDArray[np.int64]  # (H, W) the bolt hole nearest each pixel
    hole_dist: FloatArray  # (H, W) distance to that hole's centre, units of R
    drilled: BoolArray  # (N_HOLES,) which holes are drilled
    light: FloatArray  # (3,) unit vector towards the light (x right, y down, z up)
    exposure: float
    ring_phase: float
    background: FloatArray  # (H, W, 3) belt before the shadow
    noise: FloatArray  # (H, W, 3) sensor noise in grey levels

    @property
    def material(self) -> BoolArray:
        """Pixels covered by the part (disc minus bore and holes), ``(H, W)``."""
        holes = (self.hole_dist <= HOLE_RADIUS) & self.drilled[self.hole_index]
        return np.asarray((self.r <= 1.0) & (self.r >= _BORE) & ~holes)

    @property
    def hole_ring(self) -> BoolArray:
        """Drilled holes with their chamfers, ``(H, W)``."""
        near = self.hole_dist <= HOLE_RADIUS + HOLE_CHAMFER
        return np.asarray(near & self.drilled[self.hole_index])

    @property
    def face(self) -> BoolArray:
        """The flat top face: material away from the chamfers, ``(H, W)``."""
        near_hole = self.hole_ring
        return np.asarray(
            self.material
            & (self.r <= 1.0 - _RIM_CHAMFER)
            & (self.r >= _BORE + _BORE_CHAMFER)
            & ~near_hole
        )


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> FloatArray:
    """Zero-mean unit-std noise varying over ``scale`` pixels, ``shape``.

    White noise on a grid ``scale`` times coarser, upsampled by cubic splines (cheaper than
    blurring full-size noise with a wide Gaussian).
    """
    coarse = (math.ceil(shape[0] / scale) + 3, math.ceil(shape[1] / scale) + 3)
    grid = rng.standard_normal(coarse)
    big = (round(coarse[1] * scale), round(coarse[0] * scale))
    fine = np.asarray(
        Image.fromarray(grid.astype(np.float32)).resize(big, Image.Resampling.BICUBIC)
    )
    field_ = fine[: shape[0], : shape[1]].astype(np.float64)
    std = float(field_.std())
    return np.asarray((field_ - field_.mean()) / (std if std > 0 else 1.0))


def draw_scene(style: FactoryStyle, size: int, rng: np.random.Generator) -> Scene:
    """Draw pose, light, belt and noise of one image (the order of draws is fixed)."""
    rotation = float(rng.uniform(0.0, 2.0 * math.pi))
    radius_px = size * style.radius * float(np.exp(rng.normal(0.0, style.radius_jitter)))
    centre = size / 2.0 + rng.normal(0.0, style.offset_jitter * size, size=2)
    azimuth = math.radians(style.light_azimuth_deg + rng.normal(0.0, style.light_jitter_deg))
    exposure = style.exposure * float(np.exp(rng.normal(0.0, style.exposure_jitter)))
    ring_phase = float(rng.uniform(0.0, 2.0 * math.pi))

    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy = rows + 0.5 - centre[0]
    dx = cols + 0.5 - centre[1]
    # Undo the camera tilt (vertical foreshortening), then the part's rotation.
    py = dy / style.tilt
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    u = (dx * cos_r + py * sin_r) / radius_px
    v = (-dx * sin_r + py * cos_r) / radius_px
    r = np.hypot(u, v)
    # Holes sit at part-frame angles 2 pi k / N_HOLES; the nearest one is the closest angle
    # (holes lie far apart compared with their radius plus chamfer).
    step = 2.0 * math.pi / N_HOLES
    hole_index = np.rint(np.arctan2(v, u) / step).astype(np.int64) % N_HOLES
    hole_angle = hole_index * step
    hole_dist = np.hypot(
        u - _HOLE_CIRCLE * np.cos(hole_angle), v - _HOLE_CIRCLE * np.sin(hole_angle)
    )

    light = np.array(
        [
            math.cos(azimuth) * math.cos(_LIGHT_ELEVATION),
            math.sin(azimuth) * math.cos(_LIGHT_ELEVATION),
            math.sin(_LIGHT_ELEVATION),
        ]
    )
    # Belt: base colour, mottling, and a brightness ramp towards the light.
    mottle = smooth_noise((size, size), scale=size / 6.0, rng=rng)
    grain = rng.standard_normal((size, size)) * 0.02
    ramp = 1.0 + 0.25 * (dx * light[0] + dy * light[1]) / size
    base = np.asarray(style.background_rgb)
    belt = (1.0 + style.background_mottle * mottle + grain)[..., None] * ramp[..., None] * base
    noise = rng.normal(0.0, style.noise_std, size=(size, size, 3))
    return Scene(
        style=style,
        size=size,
        dx=dx,
        dy=dy,
        r=r,
        centre=(float(centre[0]) - 0.5, float(centre[1]) - 0.5),
        radius_px=radius_px,
        rotation=rotation,
        hole_index=hole_index,
        hole_dist=hole_dist,
        drilled=np.ones(N_HOLES, dtype=bool),
        light=light,
        exposure=exposure,
        ring_phase=ring_phase,
        background=belt,
        noise=noise,
    )


def _shading(scene: Scene) -> FloatArray:
    """Brightness of the bare metal, ``(H, W)``: Lambert + specular + turning marks."""
    # Surface normals: flat face, rim chamfer tilted outwards, bore and hole chamfers inwards.
    radial = np.stack([scene.dx, scene.dy])
    radial = radial / np.maximum(np.hypot(radial[0], radial[1]), 1e-9)
    nearest = scene.hole_index
    tilt_x = np.zeros_like(scene.r)
    tilt_y = np.zeros_like(scene.r)
    s = math.sin(_CHAMFER_TILT)
    rim = scene.r > 1.0 - _RIM_CHAMFER
    bore = scene.r < _BORE + _BORE_CHAMFER
    tilt_x = np.where(rim, s * radial[0], np.where(bore, -s * radial[0], tilt_x))
    tilt_y = np.where(rim, s * radial[1], np.where(bore, -s * radial[1], tilt_y))
    # Hole chamfers: tilted towards the hole centre (image-space direction from the hole).
    hole_ring = scene.hole_ring
    angle = nearest * (2.0 * math.pi / N_HOLES) + scene.rotation
    hole_cx = _HOLE_CIRCLE * scene.radius_px * np.cos(angle)
    hole_cy = _HOLE_CIRCLE * scene.radius_px * np.sin(angle) * scene.style.tilt
    to_x, to_y = scene.dx - hole_cx, scene.dy - hole_cy
    norm = np.maximum(np.hypot(to_x, to_y), 1e-9)
    tilt_x = np.where(hole_ring, -s * to_x / norm, tilt_x)
    tilt_y = np.where(hole_ring, -s * to_y / norm, tilt_y)
    nz = np.sqrt(np.clip(1.0 - tilt_x**2 - tilt_y**2, 0.0, 1.0))
    light = scene.light
    lambert = np.clip(tilt_x * light[0] + tilt_y * light[1] + nz * light[2], 0.0, None)
    half = light + np.array([0.0, 0.0, 1.0])
    half = half / np.linalg.norm(half)
    spec = np.clip(tilt_x * half[0] + tilt_y * half[1] + nz * half[2], 0.0, None) ** 40
    # Turned surface: a bow-tie highlight across the light direction and fine rings.
    azimuth = math.atan2(light[1], light[0])
    # cos(2 (polar - azimuth)) from the polar angle's double-angle terms, without arctan2.
    rho2 = np.maximum(scene.dx**2 + scene.dy**2, 1e-9)
    cos2, sin2 = (scene.dx**2 - scene.dy**2) / rho2, 2.0 * scene.dx * scene.dy / rho2
    bow_tie = 0.10 * (cos2 * math.cos(2.0 * azimuth) + sin2 * math.sin(2.0 * azimuth))
    rings = 0.035 * np.sin(2.0 * math.pi * scene.r / 0.045 + scene.ring_phase)
    flat = ~(rim | bore | hole_ring)
    texture = np.where(flat, bow_tie + rings, 0.0)
    return np.asarray(0.18 + 0.62 * lambert + 0.35 * spec + texture)


def render_scene(scene: Scene, edit: Edit | None) -> UInt8Array:
    """Render the scene, with a defect's edit when given, to ``(H, W, 3)`` uint8."""
    if edit is not None and edit.drop_hole is not None:
        drilled = scene.drilled.copy()
        drilled[edit.drop_hole] = False
        scene = replace(scene, drilled=drilled)
    style = scene.style
    material = scene.material
    shade = _shading(scene)
    paint_alpha: FloatArray | None = None
    if edit is not None:
        if edit.remove is not None:
            material = material & ~edit.remove
        if edit.shade is not None:
            shade = shade + edit.shade
        paint_alpha = edit.paint_alpha
    metal = shade[..., None] * np.asarray(style.tint_rgb)
    if paint_alpha is not None and edit is not None:
        a = paint_alpha[..., None]
        metal = (1.0 - a) * metal + a * np.asarray(edit.paint_rgb) * (0.5 + 0.5 * shade[..., None])
    # Drop shadow: the material mask moved away from the light and softened.
    offset = 0.06 * scene.radius_px
    shifted = ndimage.shift(
        material.astype(np.float64),
        (-scene.light[1] * offset, -scene.light[0] * offset),
        order=1,
        mode="constant",
    )
    shadow = ndimage.gaussian_filter(shifted, sigma=0.05 * scene.radius_px)
    belt = scene.background * (1.0 - style.shadow * shadow)[..., None]
    image = np.where(material[..., None], metal, belt) * scene.exposure * 255.0
    image = ndimage.gaussian_filter(image, sigma=(style.blur_sigma, style.blur_sigma, 0.0))
    image = image + scene.noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
