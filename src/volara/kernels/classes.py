"""Per-voxel class decisions on channel-first score arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def combine_channels(scores: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Sum the channels of each group: output channel ``i`` is the sum of
    ``scores[c]`` for ``c`` in ``groups[i]``."""
    return np.stack([scores[list(group)].sum(axis=0) for group in groups])


def argmax_classes(
    scores: np.ndarray, groups: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Index of the highest channel per voxel, after optionally combining
    channels into groups. Ties go to the lowest index."""
    if groups is not None:
        scores = combine_channels(scores, groups)
    return np.argmax(scores, axis=0)
