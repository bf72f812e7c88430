"""Blobs: irregular ellipses covering a small part of the image."""

from __future__ import annotations

import numpy as np
from tests.data.generated.synth.synthkit import IMAGES, N_SEEDS

from feddymem.data.generated.synth.blobs import blob


def test_blobs_are_small() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        assert blob(image, np.random.default_rng(seed)).mask.mean() < 0.2
