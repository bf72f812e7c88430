"""Shared pieces of the privacy audit's tests: one torch thread, random tensors, a tiny config."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

CONFIG = """
[audit]
name = "tiny"
rounds = 1
[data]
victim = "tree"
public = "tree"
victim_images = 8
public_images = 10
reference_images = 6
test_images = 0
[attack]
steps = 20
batch_size = 64
hidden = 32
oracle_steps = 5
items = 24
grid_items = 2
[model]
image_size = 64
batch_size = 8
client_memory_size = 32
kmeans_iterations = 3
[[settings]]
name = "a_full"
group = "a"
generator = false
memory_reduce = "none"
client_memory_size = 100000
[[settings]]
name = "b_pa"
group = "b"
memory_reduce = "position_average"
[[settings]]
name = "c_noise"
group = "c"
generator = false
memory_reduce = "position_average"
dynamic_memory = false
clip_quantile = 0.9
dp_noise_multiplier = 0.5
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, most of all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Writes an audit config text to `tmp_path/audit.toml` and returns its path."""

    def write(text: str = CONFIG) -> Path:
        path = tmp_path / "audit.toml"
        path.write_text(text)
        return path

    return write


def rand(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded uniform tensor."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))
