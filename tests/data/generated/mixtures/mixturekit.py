"""Fakes and checks shared by the mixture tests: tiny sizes, fake MVTec sets, a built mixture's checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from feddymem.data.generated.mixtures.recipe import ScaleSizes
from feddymem.data.generated.mixtures.registry import MIXTURES
from feddymem.data.images import read_image_size, read_mask
from feddymem.federation.client_data import load_client_data
from feddymem.federation.spec import load_spec

TINY = ScaleSizes(train=8, good=4, anomalous=4)


def _save(array: np.ndarray, path: Path, *, jpeg: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG" if jpeg else "PNG")


def fake_set(
    root: Path,
    rng: np.random.Generator,
    *,
    sizes: list[tuple[int, int]],
    defects: dict[str, int],
    n_train: int,
    n_good: int,
    stem: str,
    empty_mask: str | None = None,
) -> None:
    """A grey MVTec-layout set of noise images (JPEG) with rectangular defects (PNG masks)."""

    def image(i: int) -> np.ndarray:
        h, w = sizes[i % len(sizes)]
        return rng.integers(90, 140, size=(h, w), dtype=np.uint8)

    counter = 0
    for folder, n in (("train/good", n_train), ("test/good", n_good)):
        for _ in range(n):
            _save(image(counter), root / folder / f"{stem}{counter:03d}.jpg", jpeg=True)
            counter += 1
    for defect, n in defects.items():
        for _ in range(n):
            pixels = image(counter)
            h, w = pixels.shape
            mask = np.zeros((h, w), dtype=np.uint8)
            name = f"{stem}{counter:03d}"
            if name != empty_mask:
                mask[h // 3 : h // 3 + max(2, h // 40), w // 4 : w // 2] = 255
            pixels[mask > 0] = 250
            _save(pixels, root / "test" / defect / f"{name}.jpg", jpeg=True)
            _save(mask, root / "ground_truth" / defect / f"{name}_mask.png")
            counter += 1


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_mixture(spec_path: Path, name: str) -> None:
    """The spec parses, every client's data loads, splits are disjoint, masks fit."""
    recipe = MIXTURES[name]
    spec = load_spec(spec_path)
    assert spec.federation.name == name
    assert spec.client_names == tuple(c.name for c in recipe.clients)
    assert spec.federation.min_clients == len(recipe.clients)
    summary = json.loads((spec_path.parent / "mixture.json").read_text())
    assert summary["settings"]["name"] == name

    train_digests: set[str] = set()
    test_digests: set[str] = set()
    all_paths: list[Path] = []
    for index, client in enumerate(recipe.clients):
        data = load_client_data(spec, index)
        shares = dict(client.shares)
        assert set(data.sources) == set(shares)
        assert {s.source for s in data.train} == set(shares)
        assert {s.source for s in data.test} == set(shares)
        assert len(data.train) == TINY.train
        assert sum(s.label == 0 for s in data.test) == TINY.good
        assert sum(s.label == 1 for s in data.test) == TINY.anomalous
        assert all(s.path.name.startswith(f"{s.source}_") for s in data.train + data.test)
        counts = summary["clients"][client.name]["counts"]
        assert sum(c["train/good"] for c in counts.values()) == TINY.train
        for sample in data.test:
            hw = read_image_size(sample.path)
            assert max(hw) <= (640 if sample.source == "kolektorsdd" else 256)
            if sample.label == 1 and recipe.pixel_masks:
                assert sample.mask_path is not None
                mask = read_mask(sample.mask_path, expected_hw=hw)
                assert mask.any()
            if not recipe.pixel_masks:
                assert sample.mask_path is None
        train_digests |= {digest(s.path) for s in data.train}
        test_digests |= {digest(s.path) for s in data.test}
        all_paths += [s.path for s in data.train + data.test]
    assert not train_digests & test_digests, "a training image reappears in a test set"
    assert len(set(all_paths)) == len(all_paths)


# --------------------------------------------------------------------------------------------
