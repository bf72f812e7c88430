"""Procedurally generated product images: one machined part photographed in several factories.

The product is a turned metal flange seen from above: an outer disc with a chamfered rim, a
central bore and six bolt holes on a bolt circle, concentric turning marks and a "bow-tie"
highlight of a turned surface, lying on a conveyor belt or tray that it shadows.  Each factory
(a *source* of a mixture, :data:`FACTORIES`) images it its own way: belt colour, white balance
of the light, light direction and exposure, camera distance and tilt, sensor noise and optics.
Within a factory every image draws its pose (rotation, position, scale), light jitter and noise.

Defects (:data:`DEFECT_KINDS`) are rendered into the same scene, not pasted on the image:

* ``scratch``: a thin curved groove or glint on the face;
* ``dent``: a small bump or pit whose shading follows the light direction;
* ``chunk``: material missing from the rim (the belt shows through);
* ``stain``: a translucent rust or oil patch with an irregular outline;
* ``missing_hole``: one bolt hole not drilled (a logical defect: nothing looks damaged).

Mask contract (tested): the defective image equals the normal rendering of the same scene
outside the ``(H, W)`` bool mask, exactly; the mask is non-empty and holds the pixels the defect
changed (with their enclosed holes filled).  All randomness comes from the ``Generator`` passed
in, and the scene is drawn before the defect, so the same seed renders the same part with and
without a defect (:func:`render_pair`).

Everything is vectorised NumPy on ``(H, W)`` coordinate grids; a 256 x 256 image takes a few
milliseconds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

__all__ = [
    "DEFECT_KINDS",
    "FACTORIES",
    "FactoryStyle",
    "ProductError",
    "ProductImage",
    "render_pair",
    "render_product",
]

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

DEFECT_KINDS: tuple[str, ...] = ("scratch", "dent", "chunk", "stain", "missing_hole")
"""Defect kinds :func:`render_product` draws, also their ``test/<kind>`` folder names."""

MIN_SIZE = 64
"""Smallest image side rendered (below it the bolt holes are a few pixels)."""

_MAX_DRAWS = 20  # defect draws tried before giving up (a draw can miss the part's face)

# Part geometry in units of the outer radius R (part frame).
_BORE = 0.30
_BORE_CHAMFER = 0.06
_RIM_CHAMFER = 0.08
_HOLE_CIRCLE = 0.65
_HOLE_RADIUS = 0.085
_HOLE_CHAMFER = 0.03
_N_HOLES = 6
_CHAMFER_TILT = math.radians(40.0)
_LIGHT_ELEVATION = math.radians(50.0)


@dataclass(frozen=True, kw_only=True)
class FactoryStyle:
    """How one factory images the product (one source of a mixture).

    Colours are linear RGB in ``[0, 1]``; fractions are of the image side.

    Attributes:
        name: Source name (folder names and ``Sample.source`` carry it).
        background_rgb: Colour of the belt / tray under the part.
        background_mottle: Relative amplitude of the belt's low-frequency mottling.
        tint_rgb: White balance of the light on the metal (a colour shift of the whole part).
        light_azimuth_deg: Direction the key light comes from, in the image plane.
        light_jitter_deg: Standard deviation of the light direction between images.
        exposure: Gain of the whole image.
        exposure_jitter: Relative standard deviation of the gain between images.
        radius: Outer radius of the part as a fraction of the image side.
        radius_jitter: Relative standard deviation of the radius (camera distance).
        tilt: Camera tilt: the part's vertical axis is foreshortened by this factor (1 = top view).
        offset_jitter: Standard deviation of the part's centre, fraction of the side.
        shadow: Depth of the part's drop shadow (0 none, 1 black).
        noise_std: Sensor noise, grey levels (of 255).
        blur_sigma: Optical blur, pixels.
    """

    name: str
    background_rgb: tuple[float, float, float]
    background_mottle: float
    tint_rgb: tuple[float, float, float]
    light_azimuth_deg: float
    light_jitter_deg: float
    exposure: float
    exposure_jitter: float
    radius: float
    radius_jitter: float
    tilt: float
    offset_jitter: float
    shadow: float
    noise_std: float
    blur_sigma: float


FACTORIES: dict[str, FactoryStyle] = {
    style.name: style
    for style in (
        # Dark rubber belt, cool LED light from the top left, top view.
        FactoryStyle(
            name="plant-a",
            background_rgb=(0.17, 0.18, 0.20),
            background_mottle=0.10,
            tint_rgb=(0.80, 0.84, 0.90),
            light_azimuth_deg=225.0,
            light_jitter_deg=8.0,
            exposure=1.0,
            exposure_jitter=0.04,
            radius=0.36,
            radius_jitter=0.02,
            tilt=1.0,
            offset_jitter=0.02,
            shadow=0.55,
            noise_std=2.0,
            blur_sigma=0.6,
        ),
        # Green mat, warm tungsten light from below, slightly tilted camera, further away.
        FactoryStyle(
            name="plant-b",
            background_rgb=(0.14, 0.30, 0.17),
            background_mottle=0.15,
            tint_rgb=(0.95, 0.80, 0.58),
            light_azimuth_deg=100.0,
            light_jitter_deg=12.0,
            exposure=0.92,
            exposure_jitter=0.06,
            radius=0.31,
            radius_jitter=0.03,
            tilt=0.88,
            offset_jitter=0.04,
            shadow=0.45,
            noise_std=3.0,
            blur_sigma=0.8,
        ),
        # Light grey tray, dim bluish daylight from the right, strongly tilted close camera.
        FactoryStyle(
            name="plant-c",
            background_rgb=(0.52, 0.53, 0.55),
            background_mottle=0.06,
            tint_rgb=(0.62, 0.70, 0.86),
            light_azimuth_deg=0.0,
            light_jitter_deg=10.0,
            exposure=0.78,
            exposure_jitter=0.05,
            radius=0.40,
            radius_jitter=0.02,
            tilt=0.80,
            offset_jitter=0.02,
            shadow=0.35,
            noise_std=4.5,
            blur_sigma=1.0,
        ),
        # Navy tray, bright neutral flash from the top right, top view, sharp optics.
        FactoryStyle(
            name="plant-d",
            background_rgb=(0.07, 0.08, 0.15),
            background_mottle=0.12,
            tint_rgb=(0.95, 0.95, 0.92),
            light_azimuth_deg=315.0,
            light_jitter_deg=6.0,
            exposure=1.18,
            exposure_jitter=0.04,
            radius=0.34,
            radius_jitter=0.02,
            tilt=1.0,
            offset_jitter=0.03,
            shadow=0.60,
            noise_std=1.5,
            blur_sigma=0.5,
        ),
    )
}
"""The built-in factories (sources) by name."""


class ProductError(ValueError):
    """An unknown factory or defect kind, or a size too small to render."""


@dataclass(frozen=True)
class ProductImage:
    """One rendered product image.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool defect mask, None for a normal image.
        defect: ``"good"`` or a key of :data:`DEFECT_KINDS`.
        factory: Name of the factory style that rendered it.
    """

    image: UInt8Array
    mask: BoolArray | None
    defect: str
    factory: str


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


@dataclass
class _Edit:
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
class _Scene:
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
        holes = (self.hole_dist <= _HOLE_RADIUS) & self.drilled[self.hole_index]
        return np.asarray((self.r <= 1.0) & (self.r >= _BORE) & ~holes)

    @property
    def hole_ring(self) -> BoolArray:
        """Drilled holes with their chamfers, ``(H, W)``."""
        near = self.hole_dist <= _HOLE_RADIUS + _HOLE_CHAMFER
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


def _smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> FloatArray:
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


def _draw_scene(style: FactoryStyle, size: int, rng: np.random.Generator) -> _Scene:
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
    step = 2.0 * math.pi / _N_HOLES
    hole_index = np.rint(np.arctan2(v, u) / step).astype(np.int64) % _N_HOLES
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
    mottle = _smooth_noise((size, size), scale=size / 6.0, rng=rng)
    grain = rng.standard_normal((size, size)) * 0.02
    ramp = 1.0 + 0.25 * (dx * light[0] + dy * light[1]) / size
    base = np.asarray(style.background_rgb)
    belt = (1.0 + style.background_mottle * mottle + grain)[..., None] * ramp[..., None] * base
    noise = rng.normal(0.0, style.noise_std, size=(size, size, 3))
    return _Scene(
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
        drilled=np.ones(_N_HOLES, dtype=bool),
        light=light,
        exposure=exposure,
        ring_phase=ring_phase,
        background=belt,
        noise=noise,
    )


def _shading(scene: _Scene) -> FloatArray:
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
    angle = nearest * (2.0 * math.pi / _N_HOLES) + scene.rotation
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


def _render(scene: _Scene, edit: _Edit | None) -> UInt8Array:
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


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


def _bezier_mask(scene: _Scene, rng: np.random.Generator, *, width: float) -> BoolArray:
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


def _scratch(scene: _Scene, rng: np.random.Generator) -> _Edit:
    width = float(rng.uniform(1.0, 3.0))
    line = _bezier_mask(scene, rng, width=width) & scene.face
    sign = 1.0 if rng.random() < 0.5 else -1.0  # a glint or a groove
    depth = sign * rng.uniform(0.15, 0.45)
    return _Edit(footprint=line, shade=np.where(line, depth, 0.0))


def _dent(scene: _Scene, rng: np.random.Generator) -> _Edit:
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
    return _Edit(footprint=footprint, shade=np.where(footprint, shade, 0.0))


def _irregular_blob(
    scene: _Scene, rng: np.random.Generator, centre: tuple[float, float], radius: float
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


def _chunk(scene: _Scene, rng: np.random.Generator) -> _Edit:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    # A point on the outer rim: part frame -> rotation -> camera tilt -> pixel indices.
    world = angle + scene.rotation
    cy = scene.centre[0] + math.sin(world) * scene.radius_px * scene.style.tilt
    cx = scene.centre[1] + math.cos(world) * scene.radius_px
    radius = scene.radius_px * rng.uniform(0.10, 0.22)
    notch = _irregular_blob(scene, rng, (cy, cx), radius) & scene.material
    return _Edit(footprint=notch, remove=notch)


def _stain(scene: _Scene, rng: np.random.Generator) -> _Edit:
    face_points = np.argwhere(scene.face)
    cy, cx = face_points[int(rng.integers(len(face_points)))]
    radius = scene.radius_px * rng.uniform(0.07, 0.18)
    blob = _irregular_blob(scene, rng, (float(cy), float(cx)), radius) & scene.material
    rust = rng.random() < 0.5
    colour = (0.55, 0.30, 0.14) if rust else (0.16, 0.15, 0.17)
    alpha = rng.uniform(0.35, 0.75)
    mottle = 0.75 + 0.25 * _smooth_noise((scene.size, scene.size), scale=4.0, rng=rng).clip(-1, 1)
    paint = np.where(blob, alpha * mottle, 0.0)
    return _Edit(footprint=blob, paint_rgb=colour, paint_alpha=paint)


def _missing_hole(scene: _Scene, rng: np.random.Generator) -> _Edit:
    hole = int(rng.integers(_N_HOLES))
    # The undrilled spot and its would-be chamfer become flat face.
    spot = (
        (scene.hole_index == hole)
        & (scene.hole_dist <= _HOLE_RADIUS + _HOLE_CHAMFER)
        & (scene.r <= 1.0)
    )
    return _Edit(footprint=spot, drop_hole=hole)


_DEFECTS = {
    "scratch": _scratch,
    "dent": _dent,
    "chunk": _chunk,
    "stain": _stain,
    "missing_hole": _missing_hole,
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _style(factory: str | FactoryStyle) -> FactoryStyle:
    if isinstance(factory, FactoryStyle):
        return factory
    try:
        return FACTORIES[factory]
    except KeyError:
        raise ProductError(
            f"unknown factory {factory!r}; known factories: {', '.join(sorted(FACTORIES))}"
        ) from None


def render_pair(
    factory: str | FactoryStyle, rng: np.random.Generator, defect: str, *, size: int = 256
) -> tuple[ProductImage, ProductImage]:
    """Render one part twice, without and with a defect.

    The scene (pose, light, belt, noise) is drawn first, then the defect, so the normal image
    is the one :func:`render_product` gives for a generator in the same state with
    ``defect=None``.

    Args:
        factory: A key of :data:`FACTORIES` or a custom style.
        rng: Source of all randomness.
        defect: A key of :data:`DEFECT_KINDS`.
        size: Side of the square image, pixels (at least :data:`MIN_SIZE`).

    Returns:
        ``(normal, defective)``; the defective image equals the normal one outside its mask.

    Raises:
        ProductError: unknown factory or defect, too small a size, or no visible defect drawn
            in :data:`_MAX_DRAWS` tries.
    """
    style = _style(factory)
    if defect not in _DEFECTS:
        raise ProductError(
            f"unknown defect kind {defect!r}; known kinds: {', '.join(DEFECT_KINDS)}"
        )
    scene = _checked_scene(style, size, rng)
    normal = _render(scene, None)
    pad = math.ceil(3.0 * style.blur_sigma) + 1
    for _ in range(_MAX_DRAWS):
        edit = _DEFECTS[defect](scene, rng)
        if not edit.footprint.any():
            continue
        drawn = _render(scene, edit)
        # Blur spreads a change by a few pixels: bound it by the padded footprint.
        region = ndimage.binary_dilation(edit.footprint, iterations=pad)
        changed = (drawn != normal).any(axis=-1) & region
        mask = np.asarray(ndimage.binary_fill_holes(changed) & region)
        if mask.sum() < 4:
            continue
        defective = np.where(mask[..., None], drawn, normal).astype(np.uint8)
        return (
            ProductImage(image=normal, mask=None, defect="good", factory=style.name),
            ProductImage(image=defective, mask=mask, defect=defect, factory=style.name),
        )
    raise ProductError(
        f"{style.name}: no visible {defect!r} defect in {_MAX_DRAWS} draws (size {size})"
    )


def _checked_scene(style: FactoryStyle, size: int, rng: np.random.Generator) -> _Scene:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if size < MIN_SIZE:
        raise ProductError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    return _draw_scene(style, size, rng)


def render_product(
    factory: str | FactoryStyle,
    rng: np.random.Generator,
    *,
    defect: str | None = None,
    size: int = 256,
) -> ProductImage:
    """Render one image of the product as ``factory`` takes it.

    Args:
        factory: A key of :data:`FACTORIES` or a custom style.
        rng: Source of all randomness (scene first, then the defect).
        defect: None for a normal part, else a key of :data:`DEFECT_KINDS`.
        size: Side of the square image, pixels (at least :data:`MIN_SIZE`).

    Returns:
        The image, its mask (None when normal), the defect and factory names.

    Raises:
        ProductError: see :func:`render_pair`.
    """
    if defect is None:
        style = _style(factory)
        scene = _checked_scene(style, size, rng)
        return ProductImage(
            image=_render(scene, None), mask=None, defect="good", factory=style.name
        )
    return render_pair(factory, rng, defect, size=size)[1]
