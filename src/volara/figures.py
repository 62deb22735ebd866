"""Pictures of a segmentation: a few sections of the input, the fragments,
the segments and the ground truth side by side, the scores in the title.

``volara-cli demo --figure demo.png`` and the segmentation tutorial of the
documentation draw their overview with `draw_overview`. matplotlib is an
optional dependency (``pip install "volara[plot]"``), imported only when a
figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import Labels, Raw


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing to files only (the Agg backend), or an
    `ImportError` saying which extra installs it."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            'drawing figures needs matplotlib: pip install "volara[plot]"'
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_figure_path(path: Path | str) -> Path:
    """``path``, once it is known that a figure can be saved there: its
    suffix names a format matplotlib writes (``.png``, ``.pdf``, ``.svg``,
    ...) and its directory exists and is writable. Raises `ValueError`
    saying what is wrong, before any work is done for the figure."""
    path = Path(path)
    plt = pyplot()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        given = f"the suffix .{suffix}" if suffix else "no suffix"
        raise ValueError(
            f"figure {path}: {given}; name the format by the file's suffix, one of "
            + ", ".join(f".{name}" for name in sorted(formats))
        )
    directory = path.absolute().parent
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ValueError(f"figure {path}: {directory} {problem}")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"figure {path}: the directory {directory} is not writable")
    return path


@dataclass
class Scores:
    """What the overview's title says: the segmentation against the truth."""

    voi_split: float
    """In bits; 0 is perfect."""
    voi_merge: float
    """In bits; 0 is perfect."""
    arand: float
    """Adapted Rand error; 0 is perfect."""

    def title(self) -> str:
        return (
            f"VOI split {self.voi_split:.3f}, merge {self.voi_merge:.3f} (bits); "
            f"adapted Rand error {self.arand:.3f}"
        )


def label_colors(labels: np.ndarray) -> np.ndarray:
    """An RGB image of ``labels``: 0 black, every other id a bright colour
    of its own that depends only on the id (the same in every section)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    # golden-ratio steps spread consecutive ids around the colour wheel
    hue = (ids.astype(np.float64) * 0.6180339887) % 1.0
    value = np.where(ids == 0, 0.0, 0.95)
    saturation = np.where(ids == 0, 0.0, 0.55 + 0.4 * ((ids * 7919) % 3) / 2)
    from colorsys import hsv_to_rgb

    palette = np.array(
        [hsv_to_rgb(h, s, v) for h, s, v in zip(hue, saturation, value, strict=True)]
    )
    return palette[inverse.reshape(labels.shape)]


def draw_overview(
    path: Path | str,
    panels: dict[str, np.ndarray],
    scores: Scores | None = None,
    sections: Sequence[int] | None = None,
    labels: Sequence[str] = (),
) -> Path:
    """Draw ``panels`` (title: volume, each ``z, y, x``) side by side, one row
    per section (z index); volumes named in ``labels`` in label colours,
    the others in grey. ``sections`` default to three evenly spaced ones.
    Returns the path written."""
    plt = pyplot()
    depth = next(iter(panels.values())).shape[0]
    if sections is None:
        sections = sorted({depth // 6, depth // 2, depth - 1 - depth // 6})
    height, width = next(iter(panels.values())).shape[1:]
    size = 2.4
    figure, axes = plt.subplots(
        len(sections),
        len(panels),
        figsize=(size * len(panels), size * len(sections) * height / width + 0.6),
        squeeze=False,
    )
    for column, (name, volume) in enumerate(panels.items()):
        for row, z in enumerate(sections):
            ax = axes[row][column]
            if name in labels:
                ax.imshow(label_colors(volume[z]), interpolation="nearest")
            else:
                ax.imshow(volume[z], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
            if column == 0:
                ax.set_ylabel(f"section z={z}", fontsize=9)
    if scores is not None:
        figure.suptitle(scores.title(), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return Path(path)


def draw_sample_overview(
    container: Path | str,
    path: Path | str,
    scores: Scores | None = None,
    segments: str = "segments",
    sections: Sequence[int] | None = None,
) -> Path:
    """The overview of a segmentation of generated sample data
    (`volara.sample_data`): ``raw`` if the container has it, else the mean
    of the direct-neighbour affinities, then ``fragments``, the segments
    (array ``segments`` of the container) and the ground truth ``labels``."""
    container = Path(container)
    panels: dict[str, np.ndarray] = {}
    if (container / "raw").exists():
        panels["raw"] = _read(Raw(store=container / "raw"))
    else:
        affinities = _read(Raw(store=container / "affinities"))
        # the first three channels are the offsets (1, 0, 0), (0, 1, 0), (0, 0, 1)
        panels["affinities"] = affinities[:3].mean(axis=0)
    label_panels = {
        "fragments": "fragments",
        "segments": segments,
        "ground truth": "labels",
    }
    for title, name in label_panels.items():
        panels[title] = _read(Labels(store=container / name))
    return draw_overview(path, panels, scores, sections, labels=list(label_panels))


def _read(dataset: Raw | Labels) -> np.ndarray:
    array = dataset.array("r")
    return np.asarray(array[array.roi])
