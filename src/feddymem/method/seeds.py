"""Seeds of the federation's random steps."""

from __future__ import annotations


def round_seed(seed: int, round_idx: int) -> int:
    """The seed of round `round_idx`'s random steps (memory-reduce, noise, server k-means) in a
    run seeded `seed`: distinct for every (seed, round) pair a run can have (rounds < 100,003)."""
    return seed * 100_003 + round_idx
