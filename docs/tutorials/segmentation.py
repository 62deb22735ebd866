"""Tutorial: a segmentation from affinities, on generated data.

Run it in an empty directory (it writes sample.zarr, graph.sqlite, lut.npz,
volara_logs/ and tutorial_output/).
"""

import logging

from _transcript import OUTPUT, save
from funlib.geometry import Coordinate

from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.evaluate import describe_evaluation, evaluate
from volara.figures import Scores, draw_sample_overview
from volara.lut import LUT
from volara.sample_data import generate_sample_data

logging.basicConfig(level=logging.WARNING)

# %% data
# 30 sections of 120 x 120 pixels, 40 x 4 x 4 nm voxels: ground-truth
# cells ("labels") and their affinities with noise ("affinities").
generate_sample_data(
    "sample.zarr", shape=(30, 120, 120), num_cells=30, noise=0.3, seed=3
)

# %% inputs and outputs
affs = Affs(store="sample.zarr/affinities")  # offsets read from the zarr
print("offsets (z, y, x voxels):", [tuple(o) for o in affs.neighborhood])
short_range, long_range = affs.neighborhood[:3], affs.neighborhood[3:]
fragments = Labels(store="sample.zarr/fragments")
segments = Labels(store="sample.zarr/segments")
graph = SQLite(
    path="graph.sqlite", edge_attrs={"adj_weight": "float", "lr_weight": "float"}
)
lut = LUT(path="lut.npz")

# %% pipeline
block_size = Coordinate(10, 60, 60)  # voxels
context = Coordinate(5, 20, 20)  # voxels, at least the longest offset
extract_frags = ExtractFrags(
    db=graph, affs_data=affs, frags_data=fragments,
    block_size=block_size, context=context,
    bias=[-0.4] * len(short_range) + [-0.7] * len(long_range),
    num_workers=2,
)  # fmt: skip
aff_agglom = AffAgglom(
    db=graph, affs_data=affs, frags_data=fragments,
    block_size=block_size, context=context,
    scores={"adj_weight": short_range, "lr_weight": long_range},
    num_workers=2,
)  # fmt: skip
graph_mws = GraphMWS(
    db=graph, lut=lut, roi=affs.array("r").roi,
    weights={"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)},
)  # fmt: skip
relabel = Relabel(
    frags_data=fragments, seg_data=segments, lut=lut,
    block_size=block_size, num_workers=2,
)  # fmt: skip
pipeline = extract_frags + aff_agglom + graph_mws + relabel

# %% run
results = pipeline.run_blockwise(progress=False)
blocks = [
    f"{name}: {result.completed_count} of {result.total_block_count} blocks done"
    for name, result in results.items()
]
print(*blocks, sep="\n")

# %% scores
scores = evaluate(segments, "sample.zarr/labels")
report = describe_evaluation(scores)
print(*report, sep="\n")

# %% figure
draw_sample_overview(
    "sample.zarr",
    OUTPUT / "overview.png",
    Scores(scores.voi_split, scores.voi_merge, scores.arand),
)
# %% end
save("blocks.txt", "\n".join(blocks) + "\n")
save("scores.txt", "\n".join(report) + "\n")
