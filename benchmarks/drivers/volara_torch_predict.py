"""Make a small prediction case and run volara-torch 1.0.1's own ``Predict``
on it; started by ``benchmarks/predict_reference.py`` with the interpreter of
an environment that has volara 1.0.5 and volara-torch installed.

Writes into the current directory, all paths relative so the config is
usable anywhere:

- ``model.pt`` (a whole module, ``torch.save``) and ``weights.pt`` (other
  weights, ``{"model_state_dict": ...}``), the ``checkpoint_file`` case;
- ``data.zarr/raw``: uint8 intensities, read with ``scale_shift``;
- ``predict.json``: the ``Predict`` config as volara-torch's model dumps it;
- ``affs.npy``: what volara-torch's ``Predict`` wrote to ``data.zarr/affs``.

gunpowder 1.4 imports ``zarr.N5FSStore``, which zarr 3 no longer has; the
placeholder set here (and in the workers, through ``sitecustomize``) only
lets the import succeed: nothing here reads or writes N5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds

SHAPE = (26, 34, 30)  # voxels
VOXEL_SIZE = (8, 4, 4)
OFFSET = (16, 8, 12)
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def network() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, 3, 3),
        torch.nn.Sigmoid(),
    )


def main() -> None:
    here = Path.cwd()
    torch.manual_seed(0)
    torch.save(network(), here / "model.pt")
    torch.save({"model_state_dict": network().state_dict()}, here / "weights.pt")

    raw = prepare_ds(
        str(here / "data.zarr" / "raw"),
        shape=SHAPE,
        offset=Coordinate(OFFSET),
        voxel_size=Coordinate(VOXEL_SIZE),
        dtype=np.uint8,
        mode="w",
    )
    raw[raw.roi] = np.random.default_rng(1).integers(0, 256, SHAPE, dtype=np.uint8)

    from volara_torch.blockwise import Predict
    from volara_torch.models import TorchModel

    from volara.datasets import Affs, Raw

    task = Predict(
        checkpoint=TorchModel(
            save_path="model.pt",
            checkpoint_file="weights.pt",
            in_channels=1,
            min_input_shape=(5, 5, 5),
            min_output_shape=(1, 1, 1),
            min_step_shape=(1, 1, 1),
            out_channels=3,
            out_range=(0, 1),
            pred_size_growth=(7, 9, 9),
        ),
        in_data=Raw(store="data.zarr/raw", scale_shift=(1 / 255, 0)),
        out_data=[Affs(store="data.zarr/affs", neighborhood=NEIGHBORHOOD)],
        num_workers=1,
    )
    (here / "predict.json").write_text(
        json.dumps(task.model_dump(mode="json"), indent=2) + "\n"
    )
    task.run_blockwise(multiprocessing=True)

    import zarr

    affs = np.asarray(zarr.open_array(str(here / "data.zarr" / "affs"), mode="r")[:])
    np.save(here / "affs.npy", affs)
    print(json.dumps({"affs_shape": list(affs.shape), "affs_sum": int(affs.sum())}))


if __name__ == "__main__":
    sys.exit(main())
