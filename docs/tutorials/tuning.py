"""Tutorial: scoring a segmentation and sweeping parameters from the
command line.

Run it in an empty directory (it writes sample.zarr, pipeline.yaml,
graph.sqlite, lut.npz, sweep/, volara_logs/ and tutorial_output/).
"""

import shutil
from pathlib import Path

from _transcript import OUTPUT, shell

from volara.blockwise import pipeline_config
from volara.blockwise.registry import dump_config
from volara.demo import demo_pipeline
from volara.sample_data import generate_sample_data


def rounded(value: str) -> str:
    return f"{float(value):.3f}" if value.count(".") == 1 and len(value) > 6 else value


# %% config
generate_sample_data(
    "sample.zarr", shape=(30, 120, 120), num_cells=30, noise=0.3, seed=3
)
# the pipeline of the segmentation tutorial, as a config file
pipeline = demo_pipeline(Path("."), block_size=(10, 60, 60), context=(5, 20, 20))
dump_config(pipeline_config(pipeline), "pipeline.yaml")
# %% commands
shell("volara-cli run pipeline.yaml", "run.txt")
shell("volara-cli evaluate sample.zarr/segments sample.zarr/labels --top 3",
      "evaluate.txt")  # fmt: skip
shell(
    "volara-cli sweep pipeline.yaml --gt sample.zarr/labels"
    " --vary graph-mws.weights.adj_weight.1=-0.2,-0.3,-0.4"
    " --vary graph-mws.weights.lr_weight.1=-0.5,-0.7,-0.9"
    " --out sweep",
    "sweep.txt",
)
# %% end
shutil.copy("pipeline.yaml", OUTPUT / "pipeline.yaml")
shutil.copy("sweep/sweep.png", OUTPUT / "sweep.png")
with open("sweep/sweep.csv") as table, open(OUTPUT / "sweep.csv", "w") as short:
    for line in table:  # the scores rounded for the page
        short.write(",".join(rounded(v) for v in line.rstrip().split(",")) + "\n")
