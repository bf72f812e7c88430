"""The federation spec: parsing, validation errors naming the key, client data resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import make_tree

from feddymem.federation.spec import SpecError, load_client_data, load_spec

REPO = Path(__file__).resolve().parents[2]

BASE = """
[federation]
name = "fed"
rounds = 2
min_clients = 1
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["elpv_two_clients.toml", "elpv_mixture_four.toml", "smoke.toml"])
def test_shipped_specs_parse(name: str) -> None:
    spec = load_spec(REPO / "configs" / name)
    assert spec.num_clients >= 2
    assert spec.federation.min_clients <= spec.num_clients
    assert spec.model.seed == spec.federation.seed  # [model].seed defaults to the federation's
    for client in spec.clients:
        assert all(p.is_absolute() for p in client.data)


def test_explicit_clients_resolve_relative_paths(tmp_path: Path) -> None:
    spec = load_spec(
        _write(
            tmp_path,
            BASE
            + """
[model]
image_size = 64
seed = 5

[[clients]]
name = "a"
data = ["data/a", "/abs/b"]
""",
        )
    )
    assert spec.clients[0].data == ((tmp_path / "data" / "a").resolve(), Path("/abs/b"))
    assert spec.model.image_size == 64 and spec.model.seed == 5
    assert spec.client_names == ("a",)
    assert spec.to_dict()["clients"][0]["name"] == "a"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[federation]\nname='f'\nrounds=1\n[[clients]]\nname='a'\n", "missing key 'min_clients'"),
        (
            BASE + "colour = 1\n[[clients]]\nname='a'\n",
            r"\[federation\]: unknown key\(s\) \['colour'\]",
        ),
        (BASE + "[model]\nimagesize = 64\n[[clients]]\nname='a'\n", "imagesize"),
        (BASE + "[model]\nimage_size = 8\n[[clients]]\nname='a'\n", "image_size"),
        (
            BASE
            + "[[clients]]\nname='a'\n[partition]\nsources=['x']\nnum_clients=1\nscheme='iid'\n",
            "exactly one",
        ),
        (BASE, "exactly one"),
        (BASE + "[[clients]]\nname='a'\n[[clients]]\nname='a'\n", "used twice"),
        (BASE + "[[clients]]\nname='a/b'\n", "client name"),
        (BASE + "[[clients]]\nname='a'\ndata=[]\n", "'data' must be a non-empty list"),
        (BASE + "[[clients]]\nname='a'\npath='x'\n", r"clients\[0\]\]: unknown key"),
        (
            BASE.replace("min_clients = 1", "min_clients = 3") + "[[clients]]\nname='a'\n",
            "min_clients = 3 exceeds",
        ),
        (
            BASE.replace("rounds = 2", "rounds = -1") + "[[clients]]\nname='a'\n",
            "'rounds' must be >= 0",
        ),
        (
            BASE.replace("rounds = 2", "rounds = 'two'") + "[[clients]]\nname='a'\n",
            "'rounds' must be int",
        ),
        (BASE + "round_timeout_s = 0\n[[clients]]\nname='a'\n", "round_timeout_s"),
        (BASE + "[partition]\nsources=['x']\nnum_clients=2\nscheme='random'\n", "'scheme' must be"),
        (
            BASE + "[partition]\nsources=['x']\nnum_clients=2\nscheme='iid'\nalpha=1\n",
            "'alpha' applies",
        ),
        (
            BASE + "[partition]\nsources=['x']\nnum_clients=2\nscheme='dirichlet'\n",
            "missing key 'alpha'",
        ),
        (
            BASE
            + "[partition]\nsources=['x']\nnum_clients=2\nscheme='dirichlet'\nalpha=1\n"
            + "by='defect'\n",
            "'by' must be",
        ),
        (
            BASE + "[partition]\nsources=['a/x', 'b/x']\nnum_clients=2\nscheme='iid'\n",
            "distinct names",
        ),
        (BASE + "[extras]\n", r"unknown key\(s\) \['extras'\]"),
        ("[federation\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        load_spec(_write(tmp_path, text))
    assert "spec.toml" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")


def test_explicit_client_data_is_the_union_of_its_roots(tmp_path: Path) -> None:
    make_tree(tmp_path / "data" / "a", n_train=3)
    make_tree(tmp_path / "data" / "b", n_train=2, n_bad=1)
    spec = load_spec(
        _write(
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
        _write(
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
        _write(
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
