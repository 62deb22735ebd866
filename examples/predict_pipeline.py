"""From raw EM-like data to a segmentation: Predict + ExtractFrags +
AffAgglom + GraphMWS + Relabel.

Run it in an empty directory::

    python predict_pipeline.py            # makes the inputs, runs, prints VOI

It writes ``sample.zarr`` (``raw`` and the ground truth ``labels``; the
``affinities`` that `generate_sample_data` also writes are not used) and a
stand-in network ``affinities_net.pt``, then runs the pipeline, which writes
``sample.zarr/pred_affs``, ``sample.zarr/fragments``, ``graph.sqlite``,
``lut.npz`` and ``sample.zarr/segments``. ``predict_pipeline.yaml`` beside
this file is the same pipeline as a config file: with the inputs in place,
``volara-cli run predict_pipeline.yaml`` does the same.

There is no trained network here, so `StandInAffinities` stands in for one:
a few layers with weights set by hand (not trained) that see the dark
membranes of the raw data and give the affinity of two voxels as "no
membrane between them". Any network with the same inputs and outputs
(e.g. a UNet trained on affinities) drops in by changing `NETWORK`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate

from volara.blockwise import (
    AffAgglom,
    ExtractFrags,
    GraphMWS,
    Pipeline,
    Predict,
    Relabel,
)
from volara.datasets import Affs, Labels, Raw
from volara.dbs import SQLite
from volara.kernels.metrics import segmentation_scores
from volara.lut import LUT
from volara.models import TorchModel
from volara.sample_data import DEFAULT_NEIGHBORHOOD, generate_sample_data

SAMPLE = "sample.zarr"
NETWORK = "affinities_net.pt"
NEIGHBORHOOD = [list(offset) for offset in DEFAULT_NEIGHBORHOOD]  # voxels (z, y, x)
SHORT_RANGE_BIAS, LONG_RANGE_BIAS = -0.4, -0.7
BLOCK_SIZE, CONTEXT = Coordinate(20, 60, 60), Coordinate(10, 30, 30)  # voxels


# ----------------------------------------------------------------- inputs


def make_sample_data(path: str | Path = SAMPLE, seed: int = 0) -> None:
    """EM-like ``raw`` (uint8, grey cells with dark membranes) and the
    ground truth ``labels``: 40 x 120 x 120 voxels of 40 x 4 x 4 nm."""
    generate_sample_data(
        path,
        shape=(40, 120, 120),
        voxel_size=(40, 4, 4),
        num_cells=10,
        membranes=True,
        raw=True,
        noise=0.05,
        seed=seed,
    )


class StandInAffinities(torch.nn.Module):
    """Affinities from raw intensities, with hand-set weights.

    1. A ``smoothing``-sized averaging convolution reduces the noise.
    2. A 1 x 1 x 1 convolution and a sigmoid turn darkness into membrane
       probability, ``m = sigmoid(steepness * (threshold - intensity))``.
    3. For each offset ``o``, the affinity of ``x`` and ``x + o`` is one
       minus the highest ``m`` on the straight line from ``x`` to ``x + o``,
       ends included (a max pooling along that line): two voxels belong
       together when no membrane separates them.

    Offsets must be non-negative and along one axis. Valid operations only:
    the output is the input minus `context` voxels on each side, centred.
    """

    def __init__(
        self,
        neighborhood: list[list[int]],
        threshold: float = 0.25,
        steepness: float = 60.0,
        smoothing: tuple[int, int, int] = (1, 3, 3),
    ):
        super().__init__()
        if any(o < 0 for offset in neighborhood for o in offset) or any(
            sum(1 for o in offset if o) != 1 for offset in neighborhood
        ):
            raise ValueError(
                f"offsets must be non-negative and along one axis: {neighborhood}"
            )
        self.smooth = torch.nn.Conv3d(1, 1, kernel_size=smoothing, bias=False)
        self.membrane = torch.nn.Conv3d(1, 1, kernel_size=1)
        with torch.no_grad():
            self.smooth.weight.fill_(1.0 / self.smooth.weight.numel())
            self.membrane.weight.fill_(-steepness)
            self.membrane.bias.fill_(steepness * threshold)
        self.lines = torch.nn.ModuleList(
            torch.nn.MaxPool3d(kernel_size=[o + 1 for o in offset], stride=1)
            for offset in neighborhood
        )
        self.longest: list[int] = [
            max(offset[axis] for offset in neighborhood) for axis in range(3)
        ]
        # voxels the network needs on each side of what it predicts
        self.context: list[int] = [
            size // 2 + longest
            for size, longest in zip(smoothing, self.longest, strict=True)
        ]

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        membrane = torch.sigmoid(self.membrane(self.smooth(raw.float())))
        # the pooled value at i covers membrane[i : i + o + 1]; output voxel
        # j is membrane[j + longest]
        z, y, x = self.longest[0], self.longest[1], self.longest[2]
        nz = raw.shape[2] - 2 * self.context[0]
        ny = raw.shape[3] - 2 * self.context[1]
        nx = raw.shape[4] - 2 * self.context[2]
        channels = []
        for line in self.lines:
            crossed = line(membrane)
            channels.append(1.0 - crossed[:, :, z : z + nz, y : y + ny, x : x + nx])
        return torch.cat(channels, dim=1)


def save_stand_in_network(path: str | Path = NETWORK) -> None:
    """Save `StandInAffinities` as TorchScript: workers load it with
    ``torch.jit.load`` and need nothing from this file."""
    torch.jit.save(torch.jit.script(StandInAffinities(NEIGHBORHOOD).eval()), str(path))


# ----------------------------------------------------------------- pipeline


def predict_pipeline(num_workers: int = 2) -> Pipeline:
    """The five tasks, with paths relative to the working directory."""
    raw = Raw(store=f"{SAMPLE}/raw", scale_shift=(1 / 255, 0.0))
    affs = Affs(store=f"{SAMPLE}/pred_affs", neighborhood=NEIGHBORHOOD)
    fragments = Labels(store=f"{SAMPLE}/fragments")
    db = SQLite(
        path="graph.sqlite", edge_attrs={"adj_weight": "float", "lr_weight": "float"}
    )
    lut = LUT(path="lut.npz")
    short, long = NEIGHBORHOOD[:3], NEIGHBORHOOD[3:]

    predict = Predict(
        checkpoint=TorchModel(
            save_path=NETWORK,
            in_channels=1,
            out_channels=len(NEIGHBORHOOD),
            min_input_shape=(10, 38, 38),  # voxels
            min_output_shape=(2, 4, 4),  # 4 x 17 x 17 context on each side
            min_step_shape=(1, 1, 1),
            pred_size_growth=(18, 56, 56),  # blocks: 28x94x94 in, 20x60x60 out
            out_range=(0.0, 1.0),
        ),
        in_data=raw,
        out_data=[affs],
        num_workers=num_workers,
    )
    over_fragments: dict = dict(
        db=db,
        affs_data=affs,
        frags_data=fragments,
        block_size=BLOCK_SIZE,
        context=CONTEXT,
        num_workers=num_workers,
    )
    extract_frags = ExtractFrags(
        bias=[SHORT_RANGE_BIAS] * len(short) + [LONG_RANGE_BIAS] * len(long),
        **over_fragments,
    )
    aff_agglom = AffAgglom(
        scores={"adj_weight": short, "lr_weight": long}, **over_fragments
    )
    graph_mws = GraphMWS(
        db=db,
        lut=lut,
        roi=raw.array("r").roi,  # the affinities do not exist yet
        weights={
            "adj_weight": (1.0, SHORT_RANGE_BIAS),
            "lr_weight": (1.0, LONG_RANGE_BIAS),
        },
    )
    relabel = Relabel(
        frags_data=fragments,
        seg_data=Labels(store=f"{SAMPLE}/segments"),
        lut=lut,
        block_size=BLOCK_SIZE,
        num_workers=num_workers,
    )
    return predict + extract_frags + aff_agglom + graph_mws + relabel


def score(path: str | Path = SAMPLE) -> dict[str, float]:
    """VOI and adapted Rand error of ``segments`` against ``labels``."""
    segments = Labels(store=f"{path}/segments").array("r")[:]
    truth = Labels(store=f"{path}/labels").array("r")[:]
    scores = segmentation_scores(np.asarray(segments), np.asarray(truth))
    scores["segments"] = len(np.unique(segments[truth != 0]))
    scores["true_objects"] = len(np.unique(truth[truth != 0]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if not Path(SAMPLE, "raw").exists():
        make_sample_data()
    if not Path(NETWORK).exists():
        save_stand_in_network()
    predict_pipeline(args.workers).run_blockwise()
    print(json.dumps(score(), indent=2))


if __name__ == "__main__":
    main()
