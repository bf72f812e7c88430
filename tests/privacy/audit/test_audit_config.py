"""Audit config errors name the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.privacy.audit.conftest import CONFIG

from feddymem.config import ConfigError
from feddymem.privacy.audit import (
    load_audit_config,
)


def test_config_errors_name_the_key(write_config: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError, match="hiden"):
        load_audit_config(write_config(CONFIG.replace("hidden = 32", "hiden = 32")))
    with pytest.raises(ConfigError, match="patch_size"):
        load_audit_config(write_config(CONFIG.replace("steps = 20", "steps = 20\npatch_size = 9")))
    with pytest.raises(ConfigError, match="image_size"):
        load_audit_config(write_config(CONFIG + "image_size = 128\n"))
    with pytest.raises(ConfigError, match="dp_clip_norm"):
        load_audit_config(
            write_config(CONFIG.replace("clip_quantile = 0.9\n", "dp_clip_norm = 0\n"))
        )
    with pytest.raises(ConfigError, match="group"):
        load_audit_config(write_config(CONFIG.replace('group = "b"', 'group = "x"')))


def test_fed_padim_section_is_optional_and_checked(write_config: Callable[[str], Path]) -> None:
    assert load_audit_config(write_config(CONFIG)).fed_padim is None
    config = load_audit_config(write_config(CONFIG + "[fed_padim]\neps = 0.05\n"))
    assert config.fed_padim is not None and config.fed_padim.eps == 0.05
    assert config.as_dict()["fed_padim"] == {"eps": 0.05, "noise": [0.0]}
    noisy = load_audit_config(write_config(CONFIG + "[fed_padim]\nnoise = [0, 1.5]\n"))
    assert noisy.fed_padim is not None and noisy.fed_padim.noise == (0, 1.5)
    with pytest.raises(ConfigError, match=r"\[fed_padim\].*noise"):
        load_audit_config(write_config(CONFIG + "[fed_padim]\nnoise = [-1]\n"))
    with pytest.raises(ConfigError, match=r"\[fed_padim\].*eps"):
        load_audit_config(write_config(CONFIG + "[fed_padim]\neps = 0\n"))
    with pytest.raises(ConfigError, match="epsilon"):
        load_audit_config(write_config(CONFIG + "[fed_padim]\nepsilon = 1\n"))


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[3] / "configs").glob("audit_*.toml"))
)
def test_every_shipped_audit_config_loads(path: Path) -> None:
    from feddymem.privacy.audit.config import load_audit_config

    config = load_audit_config(path)
    assert config.settings and len({s.name for s in config.settings}) == len(config.settings)
    # the public-vote configs carry the documented setting
    if "public_vote" in path.name:
        (vote,) = [s for s in config.settings if s.name == "public_vote_18_cells2_once"]
        assert vote.model.public_vote and not vote.model.dynamic_memory
        assert (vote.model.vote_cells, vote.model.vote_noise) == (2, 18.0)
