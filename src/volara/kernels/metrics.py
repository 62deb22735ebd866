"""Segmentation quality against a ground truth.

Every score here is a function of the contingency table: how many voxels
each (segment, truth object) pair shares. The table is sparse (a segment
meets few truth objects) and additive over disjoint regions, so a volume
larger than memory is scored block by block: `block_contingency` per block,
`merge_contingencies` to add them up, `contingency_scores` once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information


def segmentation_scores(
    segmentation: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
    """Variation of information (split, merge, total; in bits, lower is
    better) and adapted Rand error (0 is perfect), over the voxels that are
    foreground (non-zero) in ``truth``."""
    foreground = truth != 0
    seg = np.asarray(segmentation)[foreground].astype(np.uint64)
    gt = np.asarray(truth)[foreground].astype(np.uint64)
    # skimage returns (H(seg|gt), H(gt|seg)): seg's entropy inside a true
    # object measures splits, gt's entropy inside a segment measures merges
    split, merge = variation_of_information(gt, seg)
    rand_error, _, _ = adapted_rand_error(gt, seg)
    return {
        "voi_split": float(split),
        "voi_merge": float(merge),
        "voi": float(split + merge),
        "adapted_rand_error": float(rand_error),
    }


@dataclass
class Contingency:
    """Voxels shared by each (segment, truth) pair, one row per pair that
    shares any; ``positions`` is one shared voxel of each pair (voxel
    coordinates in the whole volume), a place to look at it."""

    segments: np.ndarray  # uint64
    truths: np.ndarray  # uint64
    counts: np.ndarray  # int64
    positions: np.ndarray  # int64, (pairs, dims)

    @classmethod
    def empty(cls, dims: int) -> Contingency:
        return cls(
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint64),
            np.zeros(0, np.int64),
            np.zeros((0, dims), np.int64),
        )

    def __len__(self) -> int:
        return len(self.counts)

    @cached_property
    def truth_groups(self) -> Groups:
        """The pairs grouped by truth object."""
        return Groups.of(self.truths, self.counts)

    @cached_property
    def segment_groups(self) -> Groups:
        """The pairs grouped by segment."""
        return Groups.of(self.segments, self.counts)


@dataclass
class Groups:
    """Pairs of a `Contingency` grouped by one of their ids."""

    ids: np.ndarray
    """The distinct ids, sorted."""
    inverse: np.ndarray
    """Each pair's index into `ids`."""
    voxels: np.ndarray
    """Voxels of each id (float64: squared sums must not overflow)."""

    @classmethod
    def of(cls, ids: np.ndarray, counts: np.ndarray) -> Groups:
        unique, inverse = np.unique(ids, return_inverse=True)
        voxels = np.bincount(inverse, weights=counts, minlength=len(unique))
        return cls(unique, inverse, voxels.astype(np.float64))


def block_contingency(
    segmentation: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    origin: tuple[int, ...] | None = None,
) -> Contingency:
    """The contingency table of one block, over the voxels where ``truth``
    (and ``mask``, if given) is non-zero. ``origin`` is the block's first
    voxel in the whole volume (for `Contingency.positions`)."""
    counted = truth != 0
    if mask is not None:
        counted &= mask != 0
    where = np.flatnonzero(counted)
    if len(where) == 0:
        return Contingency.empty(truth.ndim)
    seg = segmentation.ravel()[where].astype(np.uint64)
    gt = truth.ravel()[where].astype(np.uint64)
    # objects are contiguous: runs of one pair along a row shrink what is
    # sorted below by orders of magnitude
    runs = np.flatnonzero(
        np.concatenate([[True], (seg[1:] != seg[:-1]) | (gt[1:] != gt[:-1])])
    )
    run_lengths = np.diff(np.append(runs, len(seg)))
    seg, gt = seg[runs], gt[runs]
    seg_ids, seg_index = np.unique(seg, return_inverse=True)
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    # pairs as one integer: at most (block voxels)^2, far below 2^63
    keys = seg_index.astype(np.int64) * len(gt_ids) + gt_index
    pairs, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    counts = np.bincount(inverse, weights=run_lengths, minlength=len(pairs))
    positions = np.stack(np.unravel_index(where[runs[first]], truth.shape), axis=1)
    if origin is not None:
        positions += np.asarray(origin, dtype=np.int64)
    return Contingency(
        seg_ids[pairs // len(gt_ids)],
        gt_ids[pairs % len(gt_ids)],
        counts.astype(np.int64),
        positions.astype(np.int64).reshape(len(pairs), truth.ndim),
    )


def merge_contingencies(tables: list[Contingency]) -> Contingency:
    """One table from several: counts of the same pair added, the first
    table's position kept."""
    if len(tables) == 1:
        return tables[0]
    segments = np.concatenate([t.segments for t in tables])
    truths = np.concatenate([t.truths for t in tables])
    counts = np.concatenate([t.counts for t in tables])
    positions = np.concatenate([t.positions for t in tables])
    order = np.lexsort((truths, segments))  # stable: earlier tables first
    segments, truths = segments[order], truths[order]
    starts = np.flatnonzero(
        np.concatenate(
            [[True], (segments[1:] != segments[:-1]) | (truths[1:] != truths[:-1])]
        )
    )
    return Contingency(
        segments[starts],
        truths[starts],
        np.add.reduceat(counts[order], starts) if len(order) else counts,
        positions[order][starts],
    )


def contingency_scores(table: Contingency) -> dict[str, float]:
    """VOI split and merge (bits) and adapted Rand error from a contingency
    table: the values `segmentation_scores` gives on the voxels counted."""
    total = float(table.counts.sum())
    if total == 0:
        return {
            "voi_split": 0.0,
            "voi_merge": 0.0,
            "voi": 0.0,
            "adapted_rand_error": 0.0,
        }
    split_terms, merge_terms = _entropy_terms(table)
    counts = table.counts.astype(np.float64)
    truth_sizes = table.truth_groups.voxels
    segment_sizes = table.segment_groups.voxels
    # pairs of voxels that share a segment / a truth object / both
    shared = counts @ counts - total
    same_truth = truth_sizes @ truth_sizes - total
    same_segment = segment_sizes @ segment_sizes - total
    denominator = 0.5 * same_truth + 0.5 * same_segment
    rand_error = 1.0 - shared / denominator if denominator > 0 else 0.0
    return {
        "voi_split": float(split_terms.sum()),
        "voi_merge": float(merge_terms.sum()),
        "voi": float(split_terms.sum() + merge_terms.sum()),
        "adapted_rand_error": float(rand_error),
    }


def _entropy_terms(table: Contingency) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's share of H(segment | truth) (splits) and of
    H(truth | segment) (merges), in bits."""
    counts = table.counts.astype(np.float64)
    p = counts / counts.sum()
    truths, segments = table.truth_groups, table.segment_groups
    return (
        -p * np.log2(counts / truths.voxels[truths.inverse]),
        -p * np.log2(counts / segments.voxels[segments.inverse]),
    )


@dataclass
class Culprit:
    """A truth object split into several segments, or a segment merging
    several truth objects."""

    id: int
    voxels: int
    """Voxels of the object (counted voxels only)."""
    pieces: int
    """Segments it is split into / truth objects it merges."""
    voi: float
    """Its share of the VOI split / merge, in bits."""
    position: tuple[int, ...]
    """A voxel (in voxels of the volume) of its second-largest piece: where
    the error is."""


def worst_splits(table: Contingency, count: int) -> list[Culprit]:
    """The ``count`` truth objects that contribute the most to VOI split."""
    split_terms, _ = _entropy_terms(table)
    return _worst(table.truth_groups, split_terms, table, count)


def worst_merges(table: Contingency, count: int) -> list[Culprit]:
    """The ``count`` segments that contribute the most to VOI merge."""
    _, merge_terms = _entropy_terms(table)
    return _worst(table.segment_groups, merge_terms, table, count)


def _worst(
    groups: Groups, terms: np.ndarray, table: Contingency, count: int
) -> list[Culprit]:
    unique, inverse, voxels = groups.ids, groups.inverse, groups.voxels
    voi = np.bincount(inverse, weights=terms, minlength=len(unique))
    pieces = np.bincount(inverse, minlength=len(unique))
    culprits = []
    for group in np.argsort(-voi, kind="stable")[:count]:
        if pieces[group] < 2:
            break
        rows = np.flatnonzero(inverse == group)
        second = rows[np.argsort(-table.counts[rows], kind="stable")[1]]
        culprits.append(
            Culprit(
                id=int(unique[group]),
                voxels=int(voxels[group]),
                pieces=int(pieces[group]),
                voi=float(voi[group]),
                position=tuple(int(c) for c in table.positions[second]),
            )
        )
    return culprits
