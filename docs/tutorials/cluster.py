"""Tutorial: a pipeline with worker configs, watched with volara-cli status.

On a cluster the worker configs would be SlurmWorker; here (and in the
documentation build, which has no SLURM) the same pipeline runs with
LocalWorker, which starts every worker through the same command a SLURM
job runs. Run it in an empty directory.
"""

import copy
from pathlib import Path

import yaml
from _transcript import OUTPUT, save, shell

from volara.blockwise import pipeline_config
from volara.blockwise.registry import dump_config
from volara.demo import demo_pipeline
from volara.evaluate import evaluate
from volara.figures import Scores, draw_sample_overview
from volara.sample_data import generate_sample_data
from volara.workers import LocalWorker, SlurmWorker

generate_sample_data("sample.zarr", shape=(20, 96, 96), num_cells=20)
pipeline = demo_pipeline(
    Path("."), num_workers=2, block_size=(10, 48, 48), context=(5, 24, 24)
)
config = pipeline_config(pipeline)
# %% slurm
slurm = SlurmWorker(
    queue="cpu", num_cpus=1, memory=2000, flags=["--time=01:00:00"]
)  # fmt: skip
on_slurm = copy.deepcopy(config)
for task in on_slurm["tasks"]:
    if task["task_type"] != "graph-mws":  # one small step: leave it local
        task["worker_config"] = slurm.model_dump(mode="json")
dump_config(on_slurm, "pipeline-slurm.yaml")
# %% local
for task in config["tasks"]:
    if task["task_type"] != "graph-mws":
        task["worker_config"] = LocalWorker().model_dump(mode="json")
dump_config(config, "pipeline.yaml")
# %% first task
first = {"tasks": config["tasks"][:1], "edges": []}
dump_config(first, "extract-frags.yaml")
# %% commands
shell("volara-cli status pipeline.yaml", "status-before.txt")
shell("volara-cli run extract-frags.yaml", "run-first.txt")
shell("volara-cli status pipeline.yaml", "status-between.txt")
shell("volara-cli run pipeline.yaml", "run.txt")
shell("volara-cli status pipeline.yaml", "status-after.txt")
shell("volara-cli status pipeline.yaml --json", "status-json.txt")
shell("ls volara_logs/fragments-extract-frags volara_logs/fragments-extract-frags-meta",
      "logs.txt")  # fmt: skip
# %% figure
scores = evaluate("sample.zarr/segments", "sample.zarr/labels")
draw_sample_overview(
    "sample.zarr",
    OUTPUT / "cluster.png",
    Scores(scores.voi_split, scores.voi_merge, scores.arand),
)
# %% end
worker_config = on_slurm["tasks"][0]["worker_config"]
save(
    "slurm-worker.yaml",
    yaml.safe_dump({"worker_config": worker_config}, sort_keys=False),
)
