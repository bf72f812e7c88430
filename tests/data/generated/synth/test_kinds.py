"""The registry of kinds and insert_anomaly: determinism, names, unknown kinds and options."""

from __future__ import annotations

import numpy as np
import pytest
from tests.data.generated.synth.synthkit import IMAGES, KINDS, assert_contract

from feddymem.data.generated.synth.kinds import ANOMALY_KINDS, insert_anomaly
from feddymem.data.generated.synth.perlin import perlin_blend


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_anomaly(kind: str) -> None:
    image = IMAGES["textured"]
    first = insert_anomaly(image, kind, np.random.default_rng(11))
    second = insert_anomaly(image, kind, np.random.default_rng(11))
    other = insert_anomaly(image, kind, np.random.default_rng(12))
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.mask, second.mask)
    assert not np.array_equal(first.image, other.image)


def test_registry_names_the_four_kinds() -> None:
    assert set(ANOMALY_KINDS) == set(KINDS)
    assert ANOMALY_KINDS["perlin"] is perlin_blend


def test_insert_anomaly_rejects_unknown_kinds_and_options() -> None:
    image = IMAGES["textured"]
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        insert_anomaly(image, "smudge", np.random.default_rng(0))
    with pytest.raises(TypeError):
        insert_anomaly(image, "cutpaste", np.random.default_rng(0), scarr=True)
    assert_contract(image, insert_anomaly(image, "cutpaste", np.random.default_rng(0), scar=True))
