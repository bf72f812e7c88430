"""Synthetic anomalies with exact pixel masks, and pixel-labelled test sets built from them.

Real pixel-labelled sets are scarce, so test sets are also made by inserting synthetic defects
into real normal images.  Four kinds are provided, each a pure function of an image and a
``numpy.random.Generator``:

* ``cutpaste``: a jittered rectangle (or a thin rotated "scar") cut from the image or from
  another normal image and pasted elsewhere.
* ``perlin``: a thresholded Perlin-noise region blended with a texture at opacity ``beta``.
* ``scratch``: a few thin curved lines, darker or brighter than the local background.
* ``blob``: an irregular, noise-deformed ellipse filled with shifted intensity or noise.

Mask contract shared by all kinds (checked by the tests over many seeds):

* the mask is ``(H, W)`` bool and never empty;
* outside the mask the output equals the input exactly (hard edges, no blend border);
* inside the mask every pixel differs from the input by at least :data:`MIN_CHANGE` grey levels
  in at least one channel.  Where a draw leaves a pixel of the anomaly region almost unchanged
  (a pasted patch matching its background, a saturated pixel that cannot get brighter), that
  pixel is pushed by ``MIN_CHANGE`` towards the side with headroom, so the mask is the whole
  solid region, as hand-drawn ground truth is, and no masked pixel is invisible.

Grey images (three equal channels) receive grey anomalies, so colour never gives a defect away.

:func:`synthesize_dataset` writes such anomalies into an MVTec-layout tree labelled synthetic by
its marker file ``feddymem_synth.json``.
"""

from feddymem.data.generated.synth.anomaly import MIN_CHANGE, MIN_SIDE, Anomaly, SynthesisError
from feddymem.data.generated.synth.blobs import blob
from feddymem.data.generated.synth.dataset import MARKER_NAME, SynthSummary, synthesize_dataset
from feddymem.data.generated.synth.kinds import ANOMALY_KINDS, DEFAULT_KINDS, insert_anomaly
from feddymem.data.generated.synth.patches import cutpaste
from feddymem.data.generated.synth.perlin import perlin_blend, perlin_noise
from feddymem.data.generated.synth.scratches import scratch

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_KINDS",
    "MARKER_NAME",
    "MIN_CHANGE",
    "MIN_SIDE",
    "Anomaly",
    "SynthSummary",
    "SynthesisError",
    "blob",
    "cutpaste",
    "insert_anomaly",
    "perlin_blend",
    "perlin_noise",
    "scratch",
    "synthesize_dataset",
]
