"""feddymem data mixture: --list, a build, and a missing name."""

from __future__ import annotations

import argparse
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from tests.data.generated.mixtures.mixturekit import TINY

from feddymem.data.generated.mixtures.cli import register_cli
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.registry import MIXTURES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddymem data")
    register_cli(parser.add_subparsers(dest="data_command", required=True))
    return parser


def _run(argv: list[str]) -> tuple[int, str]:
    args = _parser().parse_args(argv)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = args.func(args)
    return code, buffer.getvalue()


def test_cli_list_and_build(tmp_path: Path) -> None:
    code, out = _run(["mixture", "--list"])
    assert code == 0
    assert {row["name"] for row in json.loads(out)} == set(MIXTURES)
    code, out = _run(["mixture", "textures", "--out", str(tmp_path), "--seed", "2"])
    assert code == 0
    result = json.loads(out)
    assert Path(result["spec"]) == tmp_path / "textures" / "federation.toml"
    assert result["totals"]["train"] == 3 * TINY.train
    with pytest.raises(MixtureError, match="--list"):
        _run(["mixture"])
