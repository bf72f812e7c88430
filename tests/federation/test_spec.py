"""The federation spec: parsing, validation errors naming the key, client data resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddymem.federation.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]

BASE = """
[federation]
name = "fed"
rounds = 2
min_clients = 1
"""


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name",
    ["elpv_two_clients.toml", "elpv_mixture_four.toml", "smoke.toml", "surface_two_sites.toml"],
)
def test_shipped_specs_parse(name: str) -> None:
    spec = load_spec(REPO / "configs" / name)
    assert spec.num_clients >= 2
    assert spec.federation.min_clients <= spec.num_clients
    assert spec.model.seed == spec.federation.seed  # [model].seed defaults to the federation's
    for client in spec.clients:
        assert all(p.is_absolute() for p in client.data)


def test_explicit_clients_resolve_relative_paths(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
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
        load_spec(write_spec(tmp_path, text))
    assert "spec.toml" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")
