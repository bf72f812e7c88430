"""The factories that image the product: one :class:`FactoryStyle` per source of a mixture."""

from __future__ import annotations

from dataclasses import dataclass


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
