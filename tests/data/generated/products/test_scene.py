"""The product scene: drawn before any defect, rendered without an edit it is the normal image."""

from __future__ import annotations

import numpy as np

from feddymem.data.generated.products.factories import FACTORIES
from feddymem.data.generated.products.rendering import render_product
from feddymem.data.generated.products.scene import N_HOLES, draw_scene, render_scene


def test_a_scene_rendered_without_an_edit_is_the_normal_product() -> None:
    scene = draw_scene(FACTORIES["plant-b"], 96, np.random.default_rng(5))
    assert scene.drilled.shape == (N_HOLES,) and scene.drilled.all()
    assert scene.face.any() and not (scene.face & ~scene.material).any()
    normal = render_product("plant-b", np.random.default_rng(5), size=96)
    np.testing.assert_array_equal(render_scene(scene, None), normal.image)
