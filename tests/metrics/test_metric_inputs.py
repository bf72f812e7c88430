"""Input checks of the metrics: shapes, dtypes, NaN, binary labels and masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from feddymem.metrics.image import f1_max, image_auroc
from feddymem.metrics.inputs import image_inputs, pixel_inputs
from feddymem.metrics.pixel import pixel_auroc
from feddymem.metrics.pro import aupro


@pytest.mark.parametrize("fn", [image_auroc, f1_max])
def test_image_metrics_reject_bad_input(fn: Callable[..., float]) -> None:
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="same shape"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        fn([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


def test_pixel_inputs_rejected() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    maps = np.zeros((2, 4, 4))
    for fn in (pixel_auroc, aupro):
        with pytest.raises(ValueError, match="only 0 and 1"):
            fn(masks.astype(np.uint8) * 255, maps)
        with pytest.raises(ValueError, match="3-D"):
            fn(masks[0], maps[0])
        with pytest.raises(ValueError, match="same shape"):
            fn(masks, maps[:, :3])
        bad = maps.copy()
        bad[1, 2, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            fn(masks, bad)
        with pytest.raises(ValueError, match="no anomalous pixels"):
            fn(np.zeros_like(masks), maps)
        with pytest.raises(ValueError, match="no normal pixels"):
            fn(np.ones_like(masks), maps)


def test_checked_inputs_are_bool_labels_and_float_scores() -> None:
    y, s = image_inputs([0, 1, 1], [1, 2, 3])
    assert y.dtype == np.bool_ and y.tolist() == [False, True, True]
    assert s.dtype == np.float64
    m, a = pixel_inputs(np.ones((1, 2, 2), dtype=np.uint8), np.zeros((1, 2, 2), dtype=np.float32))
    assert m.dtype == np.bool_ and a.dtype == np.float32
