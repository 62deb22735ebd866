"""Accuracy on hard sample data (issue 12, item 4): the README pipeline's
segmentation of thin, densely packed neurites is measurably wrong, and more
wrong when the affinities are noisier.

The default sample data is segmented perfectly (VOI 0), so a change that
makes the pipeline less accurate would go unseen there. Here the truth is
neurites about 8 voxels across with one-voxel membranes, and the affinities
are blurred and noisy, so the pipeline leaves errors whose size a regression
would change. Both runs share the truth (same seed; noise is drawn after the
labels) and differ only in the noise of the affinities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volara.datasets import Labels
from volara.demo import demo_pipeline
from volara.kernels.metrics import segmentation_scores
from volara.logging import set_log_basedir
from volara.sample_data import generate_sample_data

HARD = dict(
    shape=(20, 96, 96),
    objects="neurites",
    num_cells=150,
    membrane_width=1,
    blur=0.5,
    seed=0,
)
"""150 neurites in 96 x 96 pixels: about 8 voxels across."""


def _scores(workdir: Path, noise: float) -> dict[str, float]:
    """Generate the hard volume with ``noise``, run ExtractFrags + AffAgglom +
    GraphMWS + Relabel with two workers on two blocks, score against the
    truth."""
    workdir.mkdir(parents=True)
    set_log_basedir(workdir / "logs")
    container = workdir / "sample.zarr"
    generate_sample_data(container, noise=noise, **HARD)
    # two blocks, so fragments are stitched across a block face; the demo's
    # (20, 80, 80) blocks (four here) took twice as long
    pipeline = demo_pipeline(
        workdir, num_workers=2, block_size=(20, 48, 96), context=(0, 24, 24)
    )
    states = pipeline.run_blockwise(progress=False)
    for name, state in states.items():
        assert state.completed_count == state.total_block_count, name
    segments = Labels(store=container / "segments").array("r")[:]
    truth = Labels(store=container / "labels").array("r")[:]
    return segmentation_scores(np.asarray(segments), np.asarray(truth))


def test_noisier_affinities_give_a_worse_segmentation(tmp_path):
    less = _scores(tmp_path / "less", noise=0.25)
    more = _scores(tmp_path / "more", noise=0.35)
    # Measured (seeds 0, 1, 2): VOI 0.17, 0.21, 0.18 at noise 0.25 and
    # 1.38, 1.40, 1.25 at noise 0.35, mostly splits; adapted Rand error
    # 0.01-0.02 and 0.27-0.30.
    assert less["voi"] > 0.05, less
    assert more["voi"] > less["voi"] + 0.3, (less, more)
    # and not much worse than measured: a regression guard with room for
    # changes in how fragments are cut
    assert less["voi"] < 0.6, less
    assert more["voi"] < 2.5, more
