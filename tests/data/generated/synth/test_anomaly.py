"""The mask contract every kind keeps, over many seeds, and the input checks they share."""

from __future__ import annotations

import numpy as np
import pytest
from tests.data.generated.synth.synthkit import IMAGES, KINDS, N_SEEDS, assert_contract, textured

from feddymem.data.generated.synth.anomaly import SynthesisError
from feddymem.data.generated.synth.blobs import blob
from feddymem.data.generated.synth.kinds import insert_anomaly
from feddymem.data.generated.synth.patches import cutpaste
from feddymem.data.generated.synth.perlin import perlin_blend
from feddymem.data.generated.synth.scratches import scratch


@pytest.mark.parametrize("image_name", sorted(IMAGES))
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_keeps_the_mask_contract(kind: str, image_name: str) -> None:
    image = IMAGES[image_name]
    before = image.copy()
    for seed in range(N_SEEDS):
        assert_contract(image, insert_anomaly(image, kind, np.random.default_rng(seed)))
    assert np.array_equal(image, before), "the input must not be modified"


@pytest.mark.parametrize("image_name", ["textured", "gray_brick", "white"])
def test_cutpaste_variants_keep_the_mask_contract(image_name: str) -> None:
    image = IMAGES[image_name]
    other = textured(7, shape=(50, 90))
    for seed in range(N_SEEDS):
        rng = np.random.default_rng(seed)
        assert_contract(image, cutpaste(image, rng, scar=True))
        assert_contract(image, cutpaste(image, rng, source=other))
        assert_contract(image, cutpaste(image, rng, source=other, scar=True))


def test_perlin_with_a_texture_image_keeps_the_mask_contract() -> None:
    image = IMAGES["textured"]
    texture = textured(3, shape=(30, 100))
    for seed in range(N_SEEDS):
        assert_contract(image, perlin_blend(image, np.random.default_rng(seed), texture=texture))


@pytest.mark.parametrize("kind", KINDS)
def test_grey_images_get_grey_anomalies(kind: str) -> None:
    image = IMAGES["gray_brick"]
    colour = textured(5)
    options: dict[str, object] = {}
    if kind == "cutpaste":
        options = {"source": colour}
    elif kind == "perlin":
        options = {"texture": colour}
    for seed in range(10):
        out, _ = insert_anomaly(image, kind, np.random.default_rng(seed), **options)
        assert np.array_equal(out[..., 0], out[..., 1])
        assert np.array_equal(out[..., 0], out[..., 2])


def test_bad_inputs_are_refused() -> None:
    image = IMAGES["textured"]
    with pytest.raises(TypeError, match="Generator"):
        blob(image, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        blob(image.astype(np.float32), np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        blob(image[..., 0], np.random.default_rng(0))
    with pytest.raises(SynthesisError, match="too small"):
        scratch(np.zeros((8, 64, 3), dtype=np.uint8), np.random.default_rng(0))
