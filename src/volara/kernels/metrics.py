"""Segmentation quality against a ground truth."""

from __future__ import annotations

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
