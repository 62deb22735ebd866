"""Run GraphMWS once over an existing SQLite graph and print its seconds and
the peak memory of the process tree as one JSON line (started by
``graph_mws.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import TreeMemory  # noqa: E402
from funlib.geometry import Roi  # noqa: E402

from volara.blockwise import GraphMWS, Pipeline  # noqa: E402
from volara.dbs import SQLite  # noqa: E402
from volara.logging import set_log_basedir  # noqa: E402
from volara.lut import LUT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--lut", type=Path, required=True)
    parser.add_argument("--roi", type=int, nargs=6, required=True)
    args = parser.parse_args()
    set_log_basedir(args.lut.parent / "logs")
    db = SQLite(path=args.db, edge_attrs={"adj_weight": "float", "lr_weight": "float"})
    task = GraphMWS(
        db=db,
        lut=LUT(path=args.lut),
        weights={"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)},
        roi=Roi(args.roi[:3], args.roi[3:]),
    )
    task.drop(drop_outputs=True)
    with TreeMemory() as memory:
        start = time.perf_counter()
        states = Pipeline(task).run_blockwise(progress=False, summary=False)
        seconds = time.perf_counter() - start
    if any(s.completed_count != s.total_block_count for s in states.values()):
        raise RuntimeError(f"GraphMWS failed: {states}")
    print(
        json.dumps(
            {
                "seconds": round(seconds, 3),
                "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
                "peak_worker_rss_mb": round(memory.peak_child_bytes / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
