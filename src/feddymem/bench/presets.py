"""Benchmark presets: which data sets, methods and seeds, at which size.

``quick`` is a smoke run of the whole pipeline on small generated mixtures (under 20 minutes
on 2 cores); ``full`` is what the README's table reports. Both use the default backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["PRESETS", "Preset"]

ALL_METHODS = (
    "local-patchcore",
    "local-cfa",
    "local-padim",
    "central-patchcore",
    "central-cfa",
    "fedavg",
    "fedprox",
    "fedae",
    "feddymem",
    "feddymem-no-generator",
    "feddymem-no-metric-loss",
    "feddymem-no-dynamic-memory",
    "feddymem-no-reduce",
    "feddymem-kmeans-reduce",
    "feddymem-mean-server",
)


@dataclass(frozen=True)
class Preset:
    """A benchmark's scope.

    Attributes:
        name: ``quick``, ``protocols`` or ``full``.
        datasets: Mixture names (`feddymem.data.generated.mixtures.registry.MIXTURES`), built at
            `scale`.
        methods: Method names (`feddymem.bench.methods.METHODS`).
        seeds: Method seeds; the table reports mean ± std over them.
        scale: Size of the built mixtures.
        rounds: Training rounds R of the federated methods.
        model: FedDyMemConfig options every method shares (features, memory sizes, training).
    """

    name: str
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    scale: Literal["quick", "full"]
    rounds: int
    model: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        datasets=("textures", "products"),
        methods=(
            "local-patchcore",
            "local-padim",
            "central-patchcore",
            "fedavg",
            "fedae",
            "feddymem",
            "feddymem-no-generator",
        ),
        seeds=(0,),
        scale="quick",
        rounds=2,
        model={"image_size": 160, "client_memory_size": 1024, "local_epochs": 1},
    ),
    "protocols": Preset(
        name="protocols",
        # Where sites need each other (feddymem.data.generated.protocols): few training normals
        # per site, and a test split holding a source only other sites trained on.
        datasets=("elpv-cells.few-8", "elpv-cells.few-16", "elpv-cells.new-variant"),
        methods=(
            "local-patchcore",
            "local-padim",
            "fedavg",
            "feddymem",
            "fed-padim",
            "feddymem-own-memory",
            "feddymem-fp16",
            "feddymem-fp16-2x",
            "feddymem-pq",
            "feddymem-pq-2x",
            "feddymem-sq8",
            "feddymem-sq4",
            "feddymem-union-pq",
        ),
        seeds=(0, 1, 2),
        scale="full",
        rounds=2,
        model={"image_size": 160, "client_memory_size": 1024, "local_epochs": 1},
    ),
    "full": Preset(
        name="full",
        datasets=("elpv-cells", "surface", "textures", "products"),
        methods=ALL_METHODS,
        seeds=(0, 1, 2),
        scale="full",
        rounds=2,
        # 160 px keeps 15 methods x 4 data sets x 3 seeds within about an hour on 2 cores.
        model={"image_size": 160, "client_memory_size": 1024, "local_epochs": 1},
    ),
}
