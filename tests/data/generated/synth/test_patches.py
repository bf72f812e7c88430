"""CutPaste: patch sizes and thin scars as the docstring promises."""

from __future__ import annotations

import numpy as np
from tests.data.generated.synth.synthkit import IMAGES, N_SEEDS

from feddymem.data.generated.synth.patches import cutpaste


def test_cutpaste_patch_is_a_rectangle_of_two_to_fifteen_percent() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = cutpaste(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == mask.sum(), "the patch must be a full rectangle"
        # Rounding the side lengths to whole pixels moves the area a little off the bounds.
        assert 0.015 <= mask.mean() <= 0.17
        aspect = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert 0.25 <= aspect <= 4.0


def test_scar_is_thin() -> None:
    image = IMAGES["textured"]
    for seed in range(N_SEEDS):
        _, mask = cutpaste(image, np.random.default_rng(seed), scar=True)
        assert mask.mean() < 0.05
