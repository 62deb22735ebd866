"""The kernels of blockwise GraphMWS (`volara.kernels.graph_mws`): which
segments a block keeps (`interior_segments`), where they lie
(`mean_positions`), and how fragment edges join into segment edges
(`combined_edges`)."""

from __future__ import annotations

import numpy as np
import pytest

from graph_levels_data import brute_force_segment_edges
from volara.kernels.graph_mws import combined_edges, interior_segments, mean_positions

NAN = float("nan")


def test_interior_segments_are_named_by_their_smallest_interior_fragment():
    # the watershed over block + context found {1, 3, 5} (named 1), {7, 9}
    # (named 7) and {2, 4} (named 2); 1 and 4 lie in the context, 2 too
    nodes = np.array([5, 3, 9, 1, 7, 2, 4], dtype=np.uint64)
    clusters = np.array([1, 1, 7, 1, 7, 2, 2], dtype=np.uint64)
    interior = np.array([True, True, True, False, True, False, False])
    fragments, segments = interior_segments(nodes, clusters, interior)
    # the block keeps its own fragments only; {1, 3, 5} is cut at the face
    # and its interior part is named 3, not 1 (1 is another block's); {2, 4}
    # lies wholly in the context: another block decides it
    assert fragments.tolist() == [5, 3, 9, 7]
    assert segments.tolist() == [3, 3, 7, 7]
    assert fragments.dtype == segments.dtype == np.uint64


def test_interior_segments_of_a_block_without_fragments_are_empty():
    fragments, segments = interior_segments(
        np.array([4, 8], dtype=np.uint64),
        np.array([4, 4], dtype=np.uint64),
        np.array([False, False]),
    )
    assert fragments.size == 0 and segments.size == 0


def test_mean_positions_weigh_by_size():
    segments = np.array([7, 3, 7, 3, 3], dtype=np.uint64)
    sizes = np.array([1, 2, 3, 4, 2])
    positions = np.array([[0.0, 0.0], [10.0, 0.0], [4.0, 8.0], [0.0, 6.0], [5.0, 3.0]])
    ids, totals, means = mean_positions(segments, sizes, positions)
    assert ids.tolist() == [3, 7]
    assert totals.tolist() == [8, 4]
    # segment 3: (2 * (10, 0) + 4 * (0, 6) + 2 * (5, 3)) / 8
    np.testing.assert_allclose(means[0], [30 / 8, 30 / 8])
    # segment 7: (1 * (0, 0) + 3 * (4, 8)) / 4
    np.testing.assert_allclose(means[1], [3.0, 6.0])


def test_mean_positions_of_unsized_fragments_are_plain_means():
    # sizes NaN (no value) count as 0; a segment of no size at all still
    # gets a position (the plain mean), so spatial queries find it
    segments = np.array([1, 1, 2, 2], dtype=np.uint64)
    sizes = np.array([NAN, 0.0, NAN, 5.0])
    positions = np.array([[0.0, 2.0], [4.0, 6.0], [1.0, 1.0], [3.0, 3.0]])
    ids, totals, means = mean_positions(segments, sizes, positions)
    assert ids.tolist() == [1, 2]
    assert totals.tolist() == [0.0, 5.0]
    np.testing.assert_allclose(means, [[2.0, 4.0], [3.0, 3.0]])


def test_mean_positions_of_no_fragments_are_empty():
    # a block without fragments
    ids, totals, means = mean_positions(
        np.zeros(0, dtype=np.uint64), np.zeros(0), np.zeros((0, 3))
    )
    assert ids.size == totals.size == 0
    assert means.shape == (0, 3)


def _observed_edges(rng, pairs: np.ndarray, per_edge: int):
    """Edges over ``pairs`` (rows may repeat, in either orientation), each
    the mean of a random number of observations; returns the edges' columns
    and the observations of each unordered pair."""
    columns: dict[str, list] = {k: [] for k in ("u", "v", "mean", "count", "lo", "hi")}
    observed: dict[tuple[int, int], list[float]] = {}
    for a, b in pairs.tolist():
        values = rng.random(rng.integers(1, per_edge + 1))
        for key, value in zip(
            columns,
            (a, b, values.mean(), values.size, values.min(), values.max()),
            strict=True,
        ):
            columns[key].append(value)
        if a != b:
            observed.setdefault((min(a, b), max(a, b)), []).extend(values.tolist())
    arrays = {
        k: np.array(v, dtype=np.uint64 if k in "uv" else np.float64)
        for k, v in columns.items()
    }
    return arrays, observed


def test_combined_edges_equal_the_statistics_of_all_observations():
    rng = np.random.default_rng(5)
    pairs = rng.integers(1, 8, (200, 2))
    edges, observed = _observed_edges(rng, pairs, per_edge=30)
    u, v, joined = combined_edges(
        edges["u"],
        edges["v"],
        means={"aff": edges["mean"]},
        counts={"aff": edges["count"]},
        lows={"aff": edges["lo"]},
        highs={"aff": edges["hi"]},
    )
    # canonical (smaller, larger) pairs, sorted, one per unordered pair,
    # loops dropped
    assert list(zip(u.tolist(), v.tolist(), strict=True)) == sorted(observed)
    assert np.all(u < v)
    for i, pair in enumerate(sorted(observed)):
        values = np.array(observed[pair])
        assert joined["aff"]["mean"][i] == pytest.approx(values.mean(), rel=1e-12)
        assert joined["aff"]["count"][i] == values.size
        assert joined["aff"]["low"][i] == values.min()
        assert joined["aff"]["high"][i] == values.max()
    # and so do they according to the helper the level tests check with
    expected = brute_force_segment_edges(
        edges["u"], edges["v"], edges["mean"], edges["count"], edges["lo"], edges["hi"]
    )
    assert sorted(expected) == sorted(observed)


def test_combined_edges_by_hand_with_missing_values_and_loops():
    u = np.array([4, 2, 2, 4, 3, 3, 5], dtype=np.uint64)
    v = np.array([2, 4, 4, 2, 3, 5, 3], dtype=np.uint64)
    # (2, 4): three edges with a value, one without; (3, 3): a loop;
    # (3, 5): no value at all
    means = {
        "a": np.array([0.2, 0.5, NAN, 0.8, 0.9, NAN, NAN]),
        "b": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
    }
    counts = {
        "a": np.array([1.0, 2.0, 7.0, 1.0, 1.0, 3.0, 3.0]),
        "b": np.ones(7),
    }
    u_out, v_out, joined = combined_edges(
        u, v, means=means, counts=counts, lows=means, highs=means
    )
    assert u_out.tolist() == [2, 3] and v_out.tolist() == [4, 5]
    a, b = joined["a"], joined["b"]
    # (0.2 * 1 + 0.5 * 2 + 0.8 * 1) / 4: the NaN edge adds no count
    assert a["mean"][0] == pytest.approx(2.0 / 4)
    assert a["count"][0] == 4.0
    assert (a["low"][0], a["high"][0]) == (0.2, 0.8)
    assert np.isnan(a["mean"][1]) and a["count"][1] == 0.0
    assert np.isnan(a["low"][1]) and np.isnan(a["high"][1])
    # another attribute of the same edges is joined on its own
    np.testing.assert_allclose(b["mean"], [2.5, 6.5])
    np.testing.assert_array_equal(b["count"], [4.0, 2.0])
    np.testing.assert_array_equal(b["low"], [1.0, 6.0])
    np.testing.assert_array_equal(b["high"], [4.0, 7.0])


def test_combined_edges_of_loops_only_are_empty():
    ids = np.array([3, 3], dtype=np.uint64)
    values = {"a": np.array([0.5, 0.7])}
    u, v, joined = combined_edges(
        ids, ids, means=values, counts=values, lows=values, highs=values
    )
    assert u.size == v.size == 0
    assert all(joined["a"][part].size == 0 for part in ("mean", "count", "low"))
