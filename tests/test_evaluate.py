"""``volara-cli evaluate`` and `volara.evaluate`: blockwise VOI and adapted
Rand error equal scikit-image's on the same voxels; the worst objects; bad
input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds
from skimage.metrics import adapted_rand_error, variation_of_information

from processes import volara_cli as cli
from volara.evaluate import evaluate
from volara.kernels.metrics import (
    block_contingency,
    contingency_scores,
    merge_contingencies,
)

VOXEL_SIZE = Coordinate(8, 4, 4)
OFFSET = Coordinate(80, 40, 20)


def write_labels(path: Path, data: np.ndarray, chunks=(6, 16, 16), **kwargs) -> Path:
    array = prepare_ds(
        str(path),
        shape=data.shape,
        offset=kwargs.get("offset", OFFSET),
        voxel_size=kwargs.get("voxel_size", VOXEL_SIZE),
        chunk_shape=chunks,
        dtype=data.dtype,
        mode="w",
    )
    array[array.roi] = data
    return path


def objects(shape, count: int, seed: int) -> np.ndarray:
    """Labels of ``count`` blobs (nearest of random centers), 0 at their
    borders and in a corner."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.indices(shape), axis=-1).reshape(-1, len(shape))
    centers = rng.uniform(0, shape, (count, len(shape)))
    distances = ((grid[:, None, :] - centers[None]) ** 2).sum(-1)
    labels = (np.argmin(distances, axis=1) + 1).reshape(shape).astype(np.uint64)
    labels[: shape[0] // 4, : shape[1] // 4] = 0
    return labels


def corrupt(truth: np.ndarray, seed: int) -> np.ndarray:
    """A segmentation with splits (a cut through some objects), merges
    (some objects joined) and noise."""
    rng = np.random.default_rng(seed)
    seg = truth.copy() * np.uint64(10)
    seg[:, : truth.shape[1] // 2] += np.uint64(1)  # every object cut in y
    seg[np.isin(truth, [2, 3, 5])] = 20  # three objects merged
    noise = rng.random(truth.shape) < 0.05
    seg[noise] = rng.integers(1, 400, noise.sum()).astype(np.uint64)
    return seg


def skimage_scores(seg: np.ndarray, truth: np.ndarray, mask=None) -> dict:
    counted = truth != 0 if mask is None else (truth != 0) & (mask != 0)
    split, merge = variation_of_information(truth[counted], seg[counted])
    arand, _, _ = adapted_rand_error(truth[counted], seg[counted])
    return {"voi_split": split, "voi_merge": merge, "arand": arand}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_shape", [None, (5, 7, 9), (18, 40, 36)])
def test_blockwise_scores_equal_scikit_image(tmp_path, seed, block_shape):
    shape = (18, 40, 36)
    truth = objects(shape, 12, seed)
    seg = corrupt(truth, seed)
    write_labels(tmp_path / "s.zarr" / "truth", truth)
    write_labels(tmp_path / "s.zarr" / "seg", seg, chunks=(4, 8, 8))
    result = evaluate(
        tmp_path / "s.zarr" / "seg",
        tmp_path / "s.zarr" / "truth",
        block_shape=block_shape,
    )
    expected = skimage_scores(seg, truth)
    for key, value in expected.items():
        assert getattr(result, key) == pytest.approx(value, abs=1e-6), key
    assert result.voi_split > 0.5 and result.voi_merge > 0.1  # errors of both kinds
    assert result.voxels == np.count_nonzero(truth)
    assert result.truth_objects == len(np.unique(truth[truth != 0]))
    if block_shape == (5, 7, 9):
        assert result.blocks == 4 * 6 * 4


def test_mask_excludes_voxels(tmp_path):
    truth = objects((12, 30, 30), 8, 3)
    seg = corrupt(truth, 3)
    mask = np.zeros(truth.shape, np.uint8)
    mask[:, :, :20] = 1
    for name, data in [("truth", truth), ("seg", seg), ("mask", mask)]:
        write_labels(tmp_path / "s.zarr" / name, data)
    result = evaluate(
        "s.zarr/seg", "s.zarr/truth", mask="s.zarr/mask", block_shape=(5, 8, 8)
    )
    expected = skimage_scores(seg, truth, mask)
    for key, value in expected.items():
        assert getattr(result, key) == pytest.approx(value, abs=1e-6), key
    assert result.voxels == np.count_nonzero((truth != 0) & (mask != 0))


def test_worst_split_and_merge_are_found_and_located(tmp_path):
    truth = np.zeros((10, 20, 20), np.uint64)
    truth[:, :10] = 1
    truth[:, 10:] = 2
    truth[:, :, 15:] = 3
    seg = truth.copy()
    seg[:, 5:10, :15] = 7  # object 1 split: its upper half is segment 7
    seg[truth == 3] = 2  # objects 2 and 3 merged into segment 2
    write_labels(tmp_path / "s.zarr" / "truth", truth)
    write_labels(tmp_path / "s.zarr" / "seg", seg)
    result = evaluate("s.zarr/seg", "s.zarr/truth", block_shape=(4, 8, 8))
    (split,) = result.worst_splits
    assert (split["id"], split["pieces"]) == (1, 2)
    assert split["voxels"] == 10 * 10 * 15
    # a voxel of the smaller piece (segment 7), in world units
    voxel = (Coordinate(split["position"]) - OFFSET) / VOXEL_SIZE
    assert seg[tuple(voxel)] == 7
    (merge,) = result.worst_merges
    assert (merge["id"], merge["pieces"]) == (2, 2)
    voxel = (Coordinate(merge["position"]) - OFFSET) / VOXEL_SIZE
    assert seg[tuple(voxel)] == 2 and truth[tuple(voxel)] == 3


def test_tables_of_blocks_add_up_to_the_whole():
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 5, (8, 9, 10)).astype(np.uint64)
    seg = rng.integers(0, 7, (8, 9, 10)).astype(np.uint64)
    whole = block_contingency(seg, truth)
    halves = merge_contingencies(
        [
            block_contingency(seg[:4], truth[:4]),
            block_contingency(seg[4:], truth[4:], origin=(4, 0, 0)),
        ]
    )
    np.testing.assert_array_equal(halves.counts, whole.counts)
    np.testing.assert_array_equal(halves.segments, whole.segments)
    np.testing.assert_array_equal(halves.truths, whole.truths)
    assert contingency_scores(halves) == pytest.approx(contingency_scores(whole))
    for s, t, position in zip(
        halves.segments, halves.truths, halves.positions, strict=True
    ):
        assert (seg[tuple(position)], truth[tuple(position)]) == (s, t)


def test_cli_json_and_text(tmp_path):
    truth = objects((12, 30, 30), 8, 4)
    seg = corrupt(truth, 4)
    write_labels(tmp_path / "s.zarr" / "truth", truth)
    write_labels(tmp_path / "s.zarr" / "seg", seg)
    result = cli("evaluate", "s.zarr/seg", "s.zarr/truth", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    expected = skimage_scores(seg, truth)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-6)
    text = cli("evaluate", "s.zarr/seg", "s.zarr/truth", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"VOI split {expected['voi_split']:.4f}" in text.stdout
    assert "ground-truth objects split the most:\n  id " in text.stdout
    assert "segments merging the most:\n  id 20: " in text.stdout
    assert "(world units)" in text.stdout


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, d: None, "segmentation: no zarr array at s.zarr/seg"),
        (
            lambda p, d: write_labels(p, d[:, :20]),
            r"ground truth: covers .* \(shape \(12, 30, 30\) voxels\), the "
            r"segmentation .* \(shape \(12, 20, 30\) voxels\)",
        ),
        (
            lambda p, d: write_labels(p, d, voxel_size=Coordinate(8, 8, 8)),
            r"ground truth: voxel size \(8, 4, 4\) differs from the "
            r"segmentation's \(8, 8, 8\)",
        ),
        (
            lambda p, d: write_labels(p, d.astype(np.float32)),
            "segmentation: .* holds float32, not integer labels",
        ),
    ],
)
def test_bad_input_is_named(tmp_path, make, message):
    truth = objects((12, 30, 30), 8, 4)
    write_labels(tmp_path / "s.zarr" / "truth", truth)
    make(tmp_path / "s.zarr" / "seg", truth)
    result = cli("evaluate", "s.zarr/seg", "s.zarr/truth", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
