"""Every detection metric of one test set at once: :func:`evaluate` and its :class:`DetectionMetrics`."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from feddymem.metrics.image import f1_max, image_auroc
from feddymem.metrics.inputs import as_labels, image_inputs, pixel_inputs
from feddymem.metrics.pixel import pixel_auroc_checked
from feddymem.metrics.pro import aupro_checked

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionMetrics:
    """Image- and pixel-level results of one evaluation.

    Attributes:
        image_auroc: AUROC of the image scores.
        f1_max: best image-level F1 over thresholds.
        pixel_auroc: pixel AUROC over the pixel-evaluated images, ``None`` when not computable.
        aupro: normalised AUPRO (FPR ≤ 0.3) over the same images, ``None`` when not computable.
        n_normal: number of normal images.
        n_anomalous: number of anomalous images.
        n_pixel_images: number of images that entered the pixel metrics.
    """

    image_auroc: float
    f1_max: float
    pixel_auroc: float | None
    aupro: float | None
    n_normal: int
    n_anomalous: int
    n_pixel_images: int

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain dict of the fields (JSON-serialisable)."""
        return dataclasses.asdict(self)


def evaluate(
    *,
    labels: ArrayLike,
    image_scores: ArrayLike,
    masks: ArrayLike | None = None,
    maps: ArrayLike | None = None,
    has_mask: ArrayLike | None = None,
) -> DetectionMetrics:
    """Compute every detection metric for one test set.

    Pixel metrics use only images that have a trustworthy mask: ``has_mask[i]`` is True and the
    image is not an anomalous one with an empty mask (anomalous images whose mask is empty or
    missing count at image level only). When ``has_mask`` is None, every normal image and every
    anomalous image with a non-empty mask is used. Normal images that enter must have empty masks.

    Args:
        labels: ``(N,)`` 0 = normal, 1 = anomalous; both classes present.
        image_scores: ``(N,)`` finite image anomaly scores.
        masks: ``(N, H, W)`` bool ground truth, or None (image metrics only).
        maps: ``(N, H, W)`` anomaly maps; given exactly when ``masks`` is given.
        has_mask: ``(N,)`` bool, which images have a real mask; None = infer as above.

    Returns:
        :class:`DetectionMetrics`; ``pixel_auroc`` and ``aupro`` are None when no masks are given
        or the evaluated images hold no anomalous (or no normal) pixel.
    """
    y, s = image_inputs(labels, image_scores)
    i_auroc = image_auroc(y, s)
    f1 = f1_max(y, s)
    n_anom = int(np.count_nonzero(y))
    n_norm = int(y.size - n_anom)

    p_auroc: float | None = None
    p_aupro: float | None = None
    n_pix = 0
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together (or both omitted)")
    if has_mask is not None and masks is None:
        raise ValueError("has_mask was given without masks and maps")
    if masks is not None and maps is not None:
        m, a = pixel_inputs(masks, maps)
        if m.shape[0] != y.size:
            raise ValueError(f"masks hold {m.shape[0]} images but labels hold {y.size}")
        nonempty = m.reshape(m.shape[0], -1).any(axis=1)
        if has_mask is None:
            use = ~y | nonempty
        else:
            hm = as_labels(has_mask, name="has_mask")
            if hm.shape != y.shape:
                raise ValueError(f"has_mask {hm.shape} and labels {y.shape} must match")
            use = hm & (~y | nonempty)
        bad_normal = use & ~y & nonempty
        if bad_normal.any():
            raise ValueError(
                f"{int(bad_normal.sum())} normal image(s) (label 0) have anomalous mask pixels,"
                f" e.g. index {int(np.flatnonzero(bad_normal)[0])}"
            )
        n_pix = int(np.count_nonzero(use))
        skipped = int(np.count_nonzero(y & ~use))
        if skipped:
            logger.info("%d anomalous image(s) without a mask: image-level only", skipped)
        if n_pix:
            m_use, a_use = m[use], a[use]
            if m_use.any() and not m_use.all():
                p_auroc = pixel_auroc_checked(m_use, a_use)
                p_aupro = aupro_checked(m_use, a_use, fpr_limit=0.3, connectivity=8)
            else:
                logger.info("pixel metrics skipped: evaluated masks hold only one pixel class")
    return DetectionMetrics(
        image_auroc=i_auroc,
        f1_max=f1,
        pixel_auroc=p_auroc,
        aupro=p_aupro,
        n_normal=n_norm,
        n_anomalous=n_anom,
        n_pixel_images=n_pix,
    )
