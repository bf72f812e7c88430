"""Audit data: patch geometry, disjoint image sets, missing folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tests.conftest import make_texture_tree
from tests.privacy.audit.conftest import CONFIG, rand

from feddymem.config import ConfigError
from feddymem.data import DataError
from feddymem.privacy.audit import (
    extract_patches,
    load_audit_config,
    select_data,
    tile_patches,
)


def test_patches_are_centred_on_their_cells_and_tile_back() -> None:
    images = rand((2, 3, 32, 48), 6)
    patches = extract_patches(images, patch_size=16, stride=8)
    assert patches.shape == (2, 4 * 6, 3 * 16 * 16)
    cells = patches.view(2, 24, 3, 16, 16)
    # cell (1, 2) covers pixels [8, 16) x [16, 24): the centre 8 x 8 of its 16 x 16 patch
    assert torch.equal(cells[0, 1 * 6 + 2, :, 4:12, 4:12], images[0, :, 8:16, 16:24])
    assert torch.equal(tile_patches(cells[1], grid=(4, 6), stride=8), images[1])


def test_missing_data_folder_is_a_clear_error(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    config = load_audit_config(write_config(CONFIG))
    with pytest.raises(DataError, match=r"\[data\] victim.*not found"):
        select_data(config.data, seed=0)


def test_data_sets_are_disjoint_and_too_few_images_are_refused(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    make_texture_tree(tmp_path / "tree", n_train=24, n_good=2, n_bad=2, size=32)
    config = load_audit_config(write_config(CONFIG))
    data = select_data(config.data, seed=0)
    paths = [{s.path for s in part} for part in (data.victim, data.reference, data.public)]
    assert [len(p) for p in paths] == [8, 6, 10]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    big = load_audit_config(
        write_config(CONFIG.replace("public_images = 10", "public_images = 11"))
    )
    with pytest.raises(ConfigError, match="public_images"):
        select_data(big.data, seed=0)
