"""Tutorial: a task of your own, in a plugin package that volara-cli and
cluster workers find.

Run it in an empty directory; it installs a copy of
docs/tutorials/volara-smooth into ./site (not into your environment) and
puts that on the path.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from _transcript import OUTPUT, save, shell
from scipy.ndimage import gaussian_filter

from volara.blockwise import get_task
from volara.datasets import Raw
from volara.figures import draw_overview
from volara.sample_data import generate_sample_data

PLUGIN = Path(__file__).resolve().parent / "volara-smooth"

generate_sample_data(
    "sample.zarr", shape=(20, 100, 100), num_cells=12, raw=True, membranes=True,
    noise=0.15, seed=2,
)  # fmt: skip
# %% install
shutil.copytree(PLUGIN, "volara-smooth")  # pip builds in the package's directory
shell(
    f"{sys.executable} -m pip install --quiet --no-deps --no-build-isolation"
    " --target site ./volara-smooth",
    "install.txt",
)
sys.path.insert(0, str(Path("site").absolute()))  # for this script
os.environ["PYTHONPATH"] = os.pathsep.join(  # for volara-cli and its workers
    [str(Path("site").absolute()), os.environ.get("PYTHONPATH", "")]
)
# %% python
from volara_smooth import Smooth  # noqa: E402

smooth = Smooth(
    in_data=Raw(store="sample.zarr/raw"),
    out_data=Raw(store="sample.zarr/smoothed"),
    sigma=(0.5, 2.0, 2.0),  # voxels
    block_size=(10, 50, 50),  # voxels
    num_workers=2,
)
result = smooth.run_blockwise(progress=False)[smooth.task_name]
print(f"{result.completed_count} of {result.total_block_count} blocks done")
print("the task volara finds under 'smooth':", get_task("smooth"))
# %% seams
raw = Raw(store="sample.zarr/raw").array("r")[:].astype(np.float32)
whole = gaussian_filter(raw, (0.5, 2.0, 2.0), mode="nearest")
blockwise = Raw(store="sample.zarr/smoothed").array("r")[:]
seams = float(np.abs(whole - blockwise).max())
print(f"largest difference to smoothing the whole volume at once: {seams:.1e}")
# %% config
Path("smooth.yaml").write_text(
    """\
task_type: smooth
in_data: {store: sample.zarr/raw}
out_data: {store: sample.zarr/smoothed_more}
sigma: [1.0, 4.0, 4.0]  # voxels
block_size: [10, 50, 50]  # voxels
num_workers: 2
"""
)
shell("volara-cli run smooth.yaml", "run.txt")
# %% figure
draw_overview(
    OUTPUT / "smooth.png",
    {
        name: Raw(store=f"sample.zarr/{name}").array("r")[:]
        for name in ["raw", "smoothed", "smoothed_more"]
    },
)
# %% end
if seams > 1e-3:
    sys.exit(f"blockwise smoothing differs from smoothing at once by {seams}")
save("python.txt", f"{result.completed_count} of {result.total_block_count} blocks done\n"
     f"the task volara finds under 'smooth': {get_task('smooth')}\n"
     f"largest difference to smoothing the whole volume at once: {seams:.1e}\n")  # fmt: skip
save("smooth.yaml", Path("smooth.yaml").read_text())
