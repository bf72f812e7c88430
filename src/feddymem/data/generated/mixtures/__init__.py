"""Multi-source mixture data sets for the comparison table, written as MVTec-layout folders.

A *mixture* is one product (or inspection) type drawn from several *sources* (data sets,
factories, textures) and dealt to several clients with different source shares, so clients
differ (non-IID) and each client's data is itself a mixture.  :data:`MIXTURES` names the
recipes; :func:`build_mixture` writes one::

    <out>/<name>/
        federation.toml              # [[clients]] with relative data paths (feddymem.federation.spec)
        mixture.json                 # recipe, seed, scale, counts per client / source / folder
        <client>/<source>/train/good/<source>_<stem>.png
        <client>/<source>/test/good/<source>_<stem>.png
        <client>/<source>/test/<defect>/<source>_<stem>.png
        <client>/<source>/ground_truth/<defect>/<source>_<stem>_mask.png

Every ``<client>/<source>`` folder is an MVTec-layout root, and the spec lists a client's
roots as its ``data``: :func:`feddymem.data.scan` names a root's samples after its folder, so
``Sample.source`` tells the sources of a client apart (and the file-name prefix keeps them
apart if the files are ever pooled).  Images are PNG (grey sources stay one-channel), resized so
the long side is at most 256 px (KolektorSDD: 640 px, keeping its 1:2.5 aspect); masks are
uint8 0 / 255 of the image's size.

A *protocol* (:mod:`feddymem.data.generated.protocols`) changes the deal: ``few-K`` keeps K
training normals per client (test splits unchanged), ``new-variant`` trains each client on one
source and tests it also on a source only other clients trained on; such builds go to
``<out>/<name>.<tag>`` (CLI: ``--protocol few-normals --k 8`` / ``--protocol new-variant``).

Guarantees (tested): no image is used twice in a mixture; training images never come from
the source's test pool (real sets keep their own train / test split; generated sources draw
test crops or renders from separate regions or seeds); test normals are held out; every
anomalous image of a recipe with ``pixel_masks`` has a non-empty mask; the same name, scale and
seed write byte-identical files.  A build goes to a hidden ``.<name>.partial`` sibling and is
moved into place at the end; re-running into a complete build with the same settings is a
no-op, with other settings a clean rewrite; a folder this module did not write is never
touched.
"""

from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.cli import cmd_data_mixture, register_cli
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import SCALES, ClientRecipe, MixtureRecipe, ScaleSizes
from feddymem.data.generated.mixtures.registry import MIXTURES, default_shared_data

__all__ = [
    "MIXTURES",
    "SCALES",
    "ClientRecipe",
    "MixtureError",
    "MixtureRecipe",
    "ScaleSizes",
    "build_mixture",
    "cmd_data_mixture",
    "default_shared_data",
    "register_cli",
]
