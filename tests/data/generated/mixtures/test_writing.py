"""Writing mixture items: MVTec folders by role and defect, masks checked before they are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.sources import Item
from feddymem.data.generated.mixtures.writing import write_item


def test_items_go_to_their_mvtec_folders_and_bad_masks_are_refused(tmp_path: Path) -> None:
    image = np.full((8, 8), 100, dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    good = Item(stem="a", defect="good", image=image, mask=None)
    assert write_item(tmp_path, "src", "train", good) == "train/good"
    assert write_item(tmp_path, "src", "good", good) == "test/good"
    mask[2:4, 2:4] = True
    crack = Item(stem="b", defect="crack", image=image, mask=mask)
    assert write_item(tmp_path, "src", "anomalous", crack) == "test/crack"
    assert (tmp_path / "train/good/src_a.png").is_file()
    assert (tmp_path / "ground_truth/crack/src_b_mask.png").is_file()
    empty = Item(stem="c", defect="crack", image=image, mask=np.zeros((8, 8), dtype=bool))
    with pytest.raises(MixtureError, match="mask empty"):
        write_item(tmp_path, "src", "anomalous", empty)
