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

from feddymem.data.generated.products.defects import DEFECT_KINDS
from feddymem.data.generated.products.factories import FACTORIES, FactoryStyle
from feddymem.data.generated.products.rendering import (
    ProductError,
    ProductImage,
    render_pair,
    render_product,
)

__all__ = [
    "DEFECT_KINDS",
    "FACTORIES",
    "FactoryStyle",
    "ProductError",
    "ProductImage",
    "render_pair",
    "render_product",
]
