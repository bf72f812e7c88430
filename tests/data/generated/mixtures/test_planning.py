"""Planning: every pool item is dealt at most once, and a pool too small is reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.data.generated.mixtures.mixturekit import TINY

from feddymem.data.generated.mixtures.build import build_mixture
from feddymem.data.generated.mixtures.errors import MixtureError
from feddymem.data.generated.mixtures.planning import plan_assignments
from feddymem.data.generated.mixtures.recipe import SCALES, BuildContext, ScaleSizes
from feddymem.data.generated.mixtures.registry import MIXTURES


def test_pool_too_small_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data: Path
) -> None:
    monkeypatch.setitem(SCALES, "full", ScaleSizes(train=500, good=4, anomalous=4))
    with pytest.raises(MixtureError, match=r"holds \d+ images, the clients need \d+"):
        build_mixture("surface", tmp_path, scale="full", shared_data=shared_data)


def test_every_pool_item_is_dealt_at_most_once() -> None:
    recipe = MIXTURES["textures"]
    ctx = BuildContext(mixture=recipe.name, seed=0, shared_data=None, elpv_cache=Path("unused"))
    sources = recipe.open_sources(ctx)
    plan = plan_assignments(recipe, TINY, sources, seed=0)
    dealt: dict[tuple[str, str], list[int]] = {}
    for job in plan:
        dealt.setdefault((job.source, sources[job.source].pool_of(job.role)), []).extend(
            job.indices
        )
    for indices in dealt.values():
        assert len(indices) == len(set(indices))
    train = sum(len(job.indices) for job in plan if job.role == "train")
    assert train == len(recipe.clients) * TINY.train
