"""Tests for the mixture protocols (few-normals, new-variant) on tiny textures builds."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pytest

from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.cli import register_cli
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.recipe import SCALES, ScaleSizes
from feddymem.data.generated.protocols import Protocol, ProtocolError
from feddymem.federation.client_data import load_client_data
from feddymem.federation.spec import load_spec

TINY = ScaleSizes(train=8, good=4, anomalous=4)


@pytest.fixture(autouse=True)
def tiny_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCALES, "quick", TINY)


def _clients(spec_path: Path) -> dict[str, object]:
    spec = load_spec(spec_path)
    return {c.name: c for c in (load_client_data(spec, i) for i in range(spec.num_clients))}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _test_set(client: object) -> set[tuple[str, str, int]]:
    return {(s.path.name, _digest(s.path), s.label) for s in client.test}  # type: ignore[attr-defined]


def test_parse_and_validation() -> None:
    assert Protocol.parse("few-8") == Protocol("few-normals", 8)
    assert Protocol.parse("new-variant").tag == "new-variant"
    for bad in ("few-", "few-1", "fewest", "variant"):
        with pytest.raises(ProtocolError):
            Protocol.parse(bad)
    with pytest.raises(ProtocolError):
        Protocol("standard", 4)


def test_few_normals_keeps_k_and_the_same_tests(tmp_path: Path) -> None:
    standard = _clients(build_mixture("textures", tmp_path, seed=0))
    spec = build_mixture("textures", tmp_path, seed=0, protocol="few-3")
    assert spec.parent.name == "textures.few-3"
    few = _clients(spec)
    assert few.keys() == standard.keys()
    for name, client in few.items():
        assert len(client.train) == 3  # type: ignore[attr-defined]
        kept = {(s.path.name, _digest(s.path)) for s in client.train}  # type: ignore[attr-defined]
        full = {(s.path.name, _digest(s.path)) for s in standard[name].train}  # type: ignore[attr-defined]
        assert kept < full
        assert _test_set(client) == _test_set(standard[name])
    with pytest.raises(MixtureError, match="exceeds"):
        build_mixture("textures", tmp_path, protocol="few-9")


def test_new_variant_tests_on_a_source_only_others_trained_on(tmp_path: Path) -> None:
    clients = _clients(build_mixture("textures", tmp_path, seed=0, protocol="new-variant"))
    trained: dict[str, set[str]] = {}
    for name, client in clients.items():
        sources = {s.path.name.split("_")[0] for s in client.train}  # type: ignore[attr-defined]
        assert len(sources) == 1
        trained[name] = sources
    for name, client in clients.items():
        tested = {s.path.name.split("_")[0] for s in client.test}  # type: ignore[attr-defined]
        novel = tested - trained[name]
        assert len(novel) == 1 and trained[name] <= tested
        others = set().union(*(t for n, t in trained.items() if n != name))
        assert novel <= others
        labels = {(s.path.name.split("_")[0], s.label) for s in client.test}  # type: ignore[attr-defined]
        assert {(src, lab) for src in tested for lab in (0, 1)} == labels
        assert len(client.test) == TINY.good + TINY.anomalous  # type: ignore[attr-defined]


def test_cli_protocol_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(
        ["mixture", "textures", "--out", str(tmp_path), "--protocol", "few-normals", "--k", "4"]
    )
    assert args.func(args) == 0
    assert (tmp_path / "textures.few-4" / "federation.toml").is_file()
    bad = parser.parse_args(["mixture", "textures", "--out", str(tmp_path), "--k", "4"])
    with pytest.raises(MixtureError, match="--protocol/--k"):
        bad.func(bad)
