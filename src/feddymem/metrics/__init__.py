"""Detection metrics: image AUROC, F1-max, pixel AUROC and AUPRO.

NumPy at the edges: every function takes array-likes and returns plain Python floats.

Shapes used throughout:

* ``labels``: ``(N,)`` image labels, ``0`` = normal, ``1`` = anomalous (bool or integer).
* ``scores`` / ``image_scores``: ``(N,)`` finite real anomaly scores, higher = more anomalous.
* ``masks``: ``(N, H, W)`` ground-truth pixel masks, bool (or numeric with values in {0, 1}).
* ``maps``: ``(N, H, W)`` finite real anomaly maps aligned with ``masks``.

The pixel metrics are exact (no threshold binning) and avoid ``O(P)`` float64 temporaries over
all ``P`` pixels: they sort the normal and the anomalous pixel scores separately (NumPy's
vectorised sort) and merge the two sorted arrays with :func:`numpy.searchsorted`. Measured on
two busy cores with 20 million float32 pixels: pixel AUROC under 1 s, AUPRO about 2 s, a few
hundred MB extra.
"""

from feddymem.metrics.evaluation import DetectionMetrics, evaluate
from feddymem.metrics.image import f1_max, image_auroc, operating_point, per_defect_image_auroc
from feddymem.metrics.pixel import pixel_auroc
from feddymem.metrics.pro import aupro, pro_curve

__all__ = [
    "DetectionMetrics",
    "aupro",
    "evaluate",
    "f1_max",
    "image_auroc",
    "operating_point",
    "per_defect_image_auroc",
    "pixel_auroc",
    "pro_curve",
]
