"""Writing a mixture's files: its images and masks in MVTec layout and its federation spec."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import MixtureRecipe, Role
from feddymem.data.generated.mixtures.sources import Item
from feddymem.data.layouts import IMAGE_EXTENSIONS


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_item(root: Path, source: str, role: Role, item: Item) -> str:
    """Write one item under the MVTec root ``root``; returns its folder key (``test/good``)."""
    stem = f"{source}_{item.stem}"
    if role == "train":
        folder = "train/good"
    elif item.defect == "good":
        folder = "test/good"
    else:
        folder = f"test/{item.defect}"
    _save_png(item.image, root / folder / f"{stem}.png")
    if item.mask is not None:
        if item.mask.shape != item.image.shape[:2] or not item.mask.any():
            raise MixtureError(f"{root / folder / stem}: mask empty or of the wrong size")
        mask = np.where(item.mask, 255, 0).astype(np.uint8)
        _save_png(mask, root / "ground_truth" / item.defect / f"{stem}_mask.png")
    return folder


def spec_text(
    recipe: MixtureRecipe, seed: int, roots: Mapping[str, list[str]], *, name: str
) -> str:
    """The federation spec TOML (rounds and timeouts are defaults a harness overrides)."""
    lines = [
        f"# Mixture {recipe.name!r}: {recipe.description}.",
        "# Written by feddymem.data.generated.mixtures; data paths are relative to this file's folder.",
        "",
        "[federation]",
        f'name = "{name}"',
        "rounds = 3",
        f"min_clients = {len(recipe.clients)}",
        f"seed = {seed}",
    ]
    for client in recipe.clients:
        data = ", ".join(json.dumps(p) for p in roots[client.name])
        lines += ["", "[[clients]]", f'name = "{client.name}"', f"data = [{data}]"]
    return "\n".join(lines) + "\n"


def count_files(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
