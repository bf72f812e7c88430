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
