"""Run every benchmark one after the other and collect their JSON.

    python benchmarks/run_all.py [--volara1-python /path/to/v1venv/bin/python]

Each script's JSON is printed as it finishes and all of them are written to
``<workdir>/results.json``. The whole suite takes about 13 minutes on two
idle cores, plus about 2 minutes the first time to generate its data; with
``--volara1-python`` the yardstick also runs volara 1.0.5 side by side,
which adds about 1 to 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = [
    "scheduling.py",
    "throughput.py",
    "graph_mws.py",
    "extract_frags_floor.py",
    "yardstick.py",
    "scaling.py",
    "predict.py",
    "evaluate.py",
    "mws_kernel.py",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench_output"))
    parser.add_argument("--volara1-python")
    parser.add_argument(
        "--only", nargs="+", choices=SUITE, help="run only these scripts"
    )
    args = parser.parse_args()
    workdir = args.workdir.absolute()
    results = {}
    for script in args.only or SUITE:
        name = script.removesuffix(".py")
        command = [sys.executable, str(HERE / script), "--workdir", str(workdir / name)]
        if script == "yardstick.py":
            # the one-run pipeline mode takes as long again; run
            # yardstick.py itself for it
            command += ["--modes", "stages"]
            if args.volara1_python:
                command += ["--volara1-python", args.volara1_python]
        start = time.perf_counter()
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        results[name] = json.loads(output.stdout[output.stdout.index("{") :])
        results[name]["benchmark_wall_seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
