"""Tutorial: from raw data to a segmentation, with a network's affinities,
in Python and as a config file.

Run it in an empty directory; it imports examples/predict_pipeline.py from
the volara repository and needs PyTorch (pip install "volara[torch]").
"""

import shutil
import sys
from pathlib import Path

import numpy as np
from _transcript import OUTPUT, save, shell

from volara.datasets import Labels, Raw
from volara.evaluate import describe_evaluation, evaluate
from volara.figures import Scores, draw_overview

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import predict_pipeline as example  # noqa: E402  (examples/predict_pipeline.py)

# %% inputs
example.make_sample_data("sample.zarr")  # raw EM-like data and ground truth
example.save_stand_in_network("affinities_net.pt")  # a TorchScript network
# %% python
pipeline = example.predict_pipeline(num_workers=2)
pipeline.run_blockwise(progress=False)
scores = evaluate("sample.zarr/segments", "sample.zarr/labels", top=0)
print(*describe_evaluation(scores)[:3], sep="\n")
# %% config
Path("from_config").mkdir()
example.make_sample_data("from_config/sample.zarr")
shutil.copy("affinities_net.pt", "from_config")
shutil.copy(EXAMPLES / "predict_pipeline.yaml", "from_config")
shell(
    "volara-cli run predict_pipeline.yaml --dry-run", "dry-run.txt", cwd="from_config"
)
shell("volara-cli run predict_pipeline.yaml", "run.txt", cwd="from_config")
shell("volara-cli evaluate sample.zarr/segments sample.zarr/labels --top 0",
      "evaluate.txt", cwd="from_config")  # fmt: skip
# %% same
same = np.array_equal(
    Labels(store="sample.zarr/segments").array("r")[:],
    Labels(store="from_config/sample.zarr/segments").array("r")[:],
)
print("the same segments from Python and from the config:", same)
# %% figure
raw = Raw(store="sample.zarr/raw").array("r")[:]
affinities = Raw(store="sample.zarr/pred_affs").array("r")[:]
labels = {
    name: Labels(store=f"sample.zarr/{array}").array("r")[:]
    for name, array in [
        ("fragments", "fragments"),
        ("segments", "segments"),
        ("ground truth", "labels"),
    ]
}
draw_overview(
    OUTPUT / "predict.png",
    {"raw": raw, "predicted affinities": affinities[:3].mean(axis=0), **labels},
    Scores(scores.voi_split, scores.voi_merge, scores.arand),
    labels=list(labels),
)
# %% end
if not same:
    sys.exit("the config gave other segments than the Python pipeline")
save("python.txt", "\n".join(describe_evaluation(scores)[:3]) + "\n")
