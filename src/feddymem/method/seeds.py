"""Seeds of the federation's random steps."""

from __future__ import annotations

import numpy as np


def round_seed(seed: int, round_idx: int) -> int:
    """The seed of round `round_idx`'s random steps (memory-reduce, noise, server k-means) in a
    run seeded `seed`: distinct for every (seed, round) pair a run can have (rounds < 100,003)."""
    return seed * 100_003 + round_idx


def stream_seed(*entropy: int, key: int = 0) -> int:
    """A 63-bit seed drawn from `entropy` (seed, round, stream tag, ...) by numpy's SeedSequence;
    with a site's secret `key` (> 0) mixed in, so that whoever knows only the config (the server
    sends it) cannot redraw the stream. key 0 gives the seed of `entropy` alone."""
    state = np.random.SeedSequence([*entropy, key] if key else list(entropy))
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
