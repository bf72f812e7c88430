"""A client's data from the federation spec: explicit roots, or its share of a partition."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_tree
from tests.federation.test_spec import BASE, write_spec

from feddymem.federation.client_data import load_client_data
from feddymem.federation.spec import SpecError, load_spec


def test_explicit_client_data_is_the_union_of_its_roots(tmp_path: Path) -> None:
    make_tree(tmp_path / "data" / "a", n_train=3)
    make_tree(tmp_path / "data" / "b", n_train=2, n_bad=1)
    spec = load_spec(
        write_spec(
            tmp_path,
            BASE + "[[clients]]\nname='mix'\ndata=['data/a','data/b']\n"
            "[[clients]]\nname='nodata'\n",
        )
    )
    data = load_client_data(spec, 0)
    assert len(data.train) == 5 and len(data.test) == 4 + 3
    assert data.sources == ("a", "b")
    with pytest.raises(SpecError, match="'data' is required"):
        load_client_data(spec, 1)
    with pytest.raises(SpecError, match="no client #5"):
        load_client_data(spec, 5)


def test_partition_clients_are_disjoint_and_evaluated_on_their_sources(tmp_path: Path) -> None:
    make_tree(tmp_path / "data" / "mono", n_train=20, seed=1)
    make_tree(tmp_path / "data" / "poly", n_train=20, seed=2, n_bad=3)
    spec = load_spec(
        write_spec(
            tmp_path,
            BASE.replace("min_clients = 1", "min_clients = 3")
            + """
[partition]
sources = ["data/mono", "data/poly"]
num_clients = 4
scheme = "dirichlet"
alpha = 0.3
by = "source"
""",
        )
    )
    assert spec.client_names == ("client-0", "client-1", "client-2", "client-3")
    shares = [load_client_data(spec, i) for i in range(4)]
    train = [s.path for d in shares for s in d.train]
    assert len(train) == len(set(train)) == 40
    for data in shares:
        assert data.train
        held = {s.source for s in data.train}
        assert set(data.sources) == held
        assert {s.source for s in data.test} == held
        expected = sum(4 if src == "mono" else 5 for src in held)
        assert len(data.test) == expected
    # the same spec gives the same partition (every simulated client recomputes it)
    again = load_client_data(load_spec(spec.path), 2)
    assert [s.path for s in again.train] == [s.path for s in shares[2].train]


def test_iid_partition(tmp_path: Path) -> None:
    make_tree(tmp_path / "data" / "mono", n_train=9)
    spec = load_spec(
        write_spec(
            tmp_path,
            BASE
            + """
[partition]
sources = ["data/mono"]
num_clients = 3
scheme = "iid"
""",
        )
    )
    sizes = [len(load_client_data(spec, i).train) for i in range(3)]
    assert sizes == [3, 3, 3]


def test_public_roots_give_a_client_their_normals_from_the_spec_or_the_node_config(
    tmp_path: Path,
) -> None:
    from feddymem.federation.client_base import client_data
    from feddymem.federation.runconfig import site_settings

    make_tree(tmp_path / "data" / "a", n_train=3)
    make_tree(tmp_path / "data" / "pub", n_train=5, n_bad=1)
    spec = load_spec(
        write_spec(tmp_path, BASE + "[[clients]]\nname='a'\ndata=['data/a']\npublic=['data/pub']\n")
    )
    assert spec.to_dict()["clients"][0]["public"] == [str((tmp_path / "data" / "pub").resolve())]
    data = load_client_data(spec, 0)
    assert len(data.public) == 5 and all(s.label == 0 for s in data.public)
    # a deployed site names them in its node config
    site = site_settings(
        {
            "name": "a",
            "data": str(tmp_path / "data" / "a"),
            "public": str(tmp_path / "data" / "pub"),
            "work-dir": str(tmp_path / "w"),
        },
        {},
        defaults={},
    )
    assert len(client_data(site).public) == 5
    without = site_settings(
        {"name": "a", "data": str(tmp_path / "data" / "a"), "work-dir": str(tmp_path / "w")},
        {},
        defaults={},
    )
    assert client_data(without).public == ()
