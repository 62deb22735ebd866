"""``volara-cli``: run pipelines from config files, and run cluster workers."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

import click

logger = logging.getLogger(__name__)


@click.group()
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def cli(log_level: str) -> None:
    """Blockwise processing of large volumes."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )


@cli.command("blockwise-worker")
@click.option(
    "-c",
    "--config-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A task config (JSON or YAML), as saved in the task's meta directory.",
)
@click.option(
    "--server",
    metavar="HOST:PORT",
    default=None,
    help="The daisy server to get blocks from. Default: the one in the "
    "DAISY_CONTEXT environment variable, else the one the running pipeline "
    "recorded beside the config (server.json).",
)
@click.option(
    "--worker-id",
    type=int,
    default=None,
    help="This worker's id in the run; volara passes it to the workers it "
    "starts. Leave it out for a worker you start yourself.",
)
@click.option(
    "--workdir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory to run in: relative paths in the config resolve against it.",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=None,
    help="Seconds to keep trying to reach the server before failing "
    "(default: the task's worker_config.connect_timeout, 60).",
)
def blockwise_worker(
    config_file: Path,
    server: str | None,
    worker_id: int | None,
    workdir: Path | None,
    connect_timeout: float | None,
) -> None:
    """Process blocks of the task in CONFIG_FILE for a running pipeline, until
    none are left. Runs on any machine that sees the config and the data and
    can reach the pipeline's daisy server."""
    from .blockwise.registry import load_task, read_config_file
    from .workers import (
        DEFAULT_CONNECT_TIMEOUT_SECONDS,
        EXIT_SERVER_GONE,
        ServerGone,
        wait_for_server,
    )

    config_file = config_file.absolute()
    if workdir is not None:
        os.chdir(workdir)
    task = load_task(read_config_file(config_file))
    task.mark_upstream_unknown()
    context = _worker_context(task.task_name, config_file, server, worker_id)
    # the worker loop, its daisy client and volara's log directory all read
    # the context from the environment
    os.environ["DAISY_CONTEXT"] = context.to_env()
    if connect_timeout is None:
        connect_timeout = (
            task.worker_config.connect_timeout
            if task.worker_config is not None
            else DEFAULT_CONNECT_TIMEOUT_SECONDS
        )
    host, port = context["hostname"], int(context["port"])
    worker_id = int(context["worker_id"])
    worker = (
        f"worker {worker_id} of {task.task_name}"
        if worker_id >= 0
        else f"a worker of {task.task_name} started by hand"
    )
    try:
        local_address = wait_for_server(host, port, connect_timeout)
    except ServerGone as e:
        click.echo(f"{worker}: {e}", err=True)
        sys.exit(EXIT_SERVER_GONE)
    except ConnectionError as e:
        raise click.ClickException(f"{worker}: {e}") from e
    logger.info(
        "%s on %s: daisy server %s:%s reached from %s",
        worker,
        socket.gethostname(),
        host,
        port,
        local_address,
    )
    task.process_blocks()


def _worker_context(
    task_name: str, config_file: Path, server: str | None, worker_id: int | None
):
    """The daisy context of a worker: DAISY_CONTEXT, overridden by the command
    line, completed from the server record beside the config."""
    import daisy.v2 as daisy

    from .logging import get_log_basedir
    from .workers import SERVER_RECORD

    values: dict = {}
    if os.environ.get("DAISY_CONTEXT"):
        values.update(daisy.Context.from_env().items())
    if server is not None:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise click.BadParameter(
                f"expected HOST:PORT, got {server!r}", param_hint="--server"
            )
        values.update(hostname=host.strip("[]"), port=int(port))
    elif "hostname" not in values:
        record = config_file.parent / SERVER_RECORD
        if not record.exists():
            raise click.ClickException(
                "no daisy server given: pass --server HOST:PORT, or set "
                f"DAISY_CONTEXT; a running pipeline records its server in {record} "
                "once it started a worker through a worker_config"
            )
        recorded = json.loads(record.read_text())
        values.update(hostname=recorded["host"], port=recorded["port"])
    if worker_id is not None:
        values["worker_id"] = worker_id
    values.setdefault("worker_id", -1)
    values["task_id"] = task_name
    if not values.get("logdir"):
        # a saved config lives in <log dir>/<task name>-meta/
        in_meta_dir = config_file.parent.name == f"{task_name}-meta"
        values["logdir"] = str(
            config_file.parent.parent if in_meta_dir else get_log_basedir()
        )
    return daisy.Context(**values)


@cli.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--serial", is_flag=True, help="Process blocks one by one in this process."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="List the tasks, their block counts and outputs; run nothing.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for worker logs and block tracking (default ./volara_logs).",
)
def run(config: Path, serial: bool, dry_run: bool, log_dir: Path | None) -> None:
    """Run the task or pipeline in CONFIG (JSON or YAML)."""
    from .blockwise.registry import load_pipeline, read_config_file
    from .logging import set_log_basedir

    if log_dir is not None:
        set_log_basedir(log_dir)
    try:
        pipeline = load_pipeline(read_config_file(config))
    except ValueError as e:
        raise click.ClickException(f"{config}: {e}") from e
    if dry_run:
        for line in describe_pipeline(pipeline):
            click.echo(line)
        return
    try:
        states = pipeline.run_blockwise(multiprocessing=not serial)
    except (ValueError, OSError) as e:
        # raised while checking inputs and preparing outputs, before any
        # block runs: a config problem, not a crash
        raise click.ClickException(f"{config}: {e}") from e
    except RuntimeError as e:
        # daisy gives a task up when its workers keep dying (see the worker
        # logs in the log directory)
        raise click.ClickException(f"{config}: {e}") from e
    incomplete = {name: state for name, state in states.items() if not state.finished}
    if incomplete:
        for name, state in incomplete.items():
            click.echo(
                f"{name}: {state.failed_count} failed, {state.orphaned_count} orphaned "
                f"of {state.total_block_count} blocks",
                err=True,
            )
            for roi in state.failed_blocks:
                click.echo(f"  failed block, write region {roi}", err=True)
        sys.exit(1)


def describe_pipeline(pipeline) -> list[str]:
    """Lines describing each task of a pipeline: name, type, block count,
    outputs and upstream tasks."""
    from .blockwise.blockwise import count_blocks

    lines = []
    for task in pipeline.tasks:
        upstream = [u.task_name for u in pipeline.task_graph.predecessors(task)]
        outputs = [str(path) for path in task.output_paths] or ["-"]
        try:
            blocks = str(count_blocks(task))
        except FileNotFoundError:
            # an input an upstream task writes: its extent is not known yet
            blocks = "?"
        lines.append(
            f"{task.task_name} ({task.task_type}): {blocks} blocks; "
            f"writes {', '.join(outputs)}; after {', '.join(upstream) or '-'}"
        )
    return lines


@cli.command("status")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The run's log directory, if it was given one (default ./volara_logs).",
)
def status(config: Path, as_json: bool, log_dir: Path | None) -> None:
    """Show, per task of CONFIG, how many blocks are done and which failed,
    without running anything (also while a run goes on)."""
    from .blockwise.registry import load_pipeline, read_config_file
    from .logging import set_log_basedir
    from .status import describe_status, pipeline_status, status_as_dict

    if log_dir is not None:
        set_log_basedir(log_dir)
    try:
        statuses = pipeline_status(load_pipeline(read_config_file(config)))
    except (ValueError, OSError) as e:
        raise click.ClickException(f"{config}: {e}") from e
    if as_json:
        click.echo(json.dumps(status_as_dict(statuses)))
        return
    for line in describe_status(statuses):
        click.echo(line)


@cli.command("sweep")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--gt",
    "ground_truth",
    required=True,
    type=click.Path(path_type=Path),
    help="The ground-truth label array to score against.",
)
@click.option(
    "--vary",
    "variations",
    multiple=True,
    required=True,
    help="TASK.FIELD=V1,V2,...: a task_type of the config, a dotted path into "
    "its fields (keys and list indices), the values to try. Repeat for more "
    "fields: every combination runs.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for each combination's outputs, sweep.csv and sweep.png.",
)
@click.option(
    "--segmentation",
    type=click.Path(path_type=Path),
    default=None,
    help="Which output array to score, as the config names it (default: the "
    "last label array a varied task or a later one writes).",
)
@click.option(
    "--mask", type=click.Path(path_type=Path), default=None, help="As for evaluate."
)
@click.option("--serial", is_flag=True, help="Process blocks in this process.")
def sweep(
    config: Path,
    ground_truth: Path,
    variations: tuple[str, ...],
    out_dir: Path,
    segmentation: Path | None,
    mask: Path | None,
    serial: bool,
) -> None:
    """Run the pipeline of CONFIG for every combination of the --vary values
    and score each segmentation against --gt (see `volara.sweep`)."""
    from .blockwise.registry import read_config_file
    from .sweep import SCORES, parse_variation, run_sweep

    def report(row: dict) -> None:
        click.echo(
            "  ".join(
                f"{key} {value:.4f}" if key in SCORES else f"{key}={value}"
                for key, value in row.items()
            )
        )

    try:
        run_sweep(
            read_config_file(config),
            ground_truth,
            [parse_variation(text) for text in variations],
            out_dir,
            segmentation=segmentation,
            mask=mask,
            multiprocessing=not serial,
            report=report,
        )
    except (ValueError, OSError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {out_dir / 'sweep.csv'} and {out_dir / 'sweep.png'}")


@cli.command("evaluate")
@click.argument("segmentation", type=click.Path(path_type=Path))
@click.argument("ground_truth", type=click.Path(path_type=Path))
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Count only voxels where this label array is non-zero.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--top",
    default=5,
    show_default=True,
    help="How many of the most split and most merging objects to list.",
)
@click.option(
    "--threads", type=int, default=None, help="Blocks read at a time (default: cores)."
)
def evaluate(
    segmentation: Path,
    ground_truth: Path,
    mask: Path | None,
    as_json: bool,
    top: int,
    threads: int | None,
) -> None:
    """Score SEGMENTATION against GROUND_TRUTH (zarr label arrays on the same
    grid): VOI split and merge (bits) and adapted Rand error, block by block,
    ignoring voxels where the ground truth (or the mask) is 0."""
    from .evaluate import describe_evaluation
    from .evaluate import evaluate as evaluate_segmentation

    try:
        result = evaluate_segmentation(
            segmentation, ground_truth, mask=mask, num_threads=threads, top=top
        )
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    for line in describe_evaluation(result):
        click.echo(line)


@cli.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default="volara_demo",
    show_default=True,
    help="Where the sample data, graph, look-up table and logs go.",
)
@click.option(
    "--workers", default=2, show_default=True, help="Workers per task (0: serial)."
)
@click.option(
    "--postgres", is_flag=True, help="Use PostgreSQL at 127.0.0.1 instead of SQLite."
)
@click.option(
    "--shape",
    nargs=3,
    type=int,
    default=(60, 240, 240),
    show_default=True,
    help="Size of the generated volume in voxels (z y x).",
)
@click.option(
    "--noise", default=0.15, show_default=True, help="Affinity noise amplitude."
)
@click.option(
    "--figure",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw sections of the affinities, fragments, segments and ground "
    "truth, with the scores, into this file (format by suffix: .png, .pdf, "
    '.svg, ...; needs pip install "volara[plot]").',
)
def demo(
    workdir: Path,
    workers: int,
    postgres: bool,
    shape: tuple[int, int, int],
    noise: float,
    figure: Path | None,
) -> None:
    """Generate EM-like sample data, segment it with ExtractFrags + AffAgglom +
    GraphMWS + Relabel, and score the result against the ground truth."""
    from .demo import run_demo

    if figure is not None:
        from .figures import check_figure_path

        try:
            check_figure_path(figure)
        except (ImportError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint="--figure") from e
    scores = run_demo(
        workdir, use_postgres=postgres, num_workers=workers, shape=shape, noise=noise
    )
    click.echo("")
    click.echo(f"segmentation written to {workdir / 'sample.zarr' / 'segments'}")
    click.echo(
        f"VOI split {scores['voi_split']:.4f}  merge {scores['voi_merge']:.4f}  "
        f"total {scores['voi']:.4f}  (bits, lower is better)"
    )
    click.echo(f"adapted Rand error {scores['adapted_rand_error']:.4f}  (0 is perfect)")
    if figure is not None:
        from .figures import Scores, draw_sample_overview

        try:
            draw_sample_overview(
                workdir / "sample.zarr",
                figure,
                Scores(
                    scores["voi_split"],
                    scores["voi_merge"],
                    scores["adapted_rand_error"],
                ),
            )
        except OSError as e:
            raise click.ClickException(f"--figure {figure}: {e}") from e
        click.echo(f"figure written to {figure}")
    if scores["failed_blocks"]:
        raise click.ClickException(f"{scores['failed_blocks']} blocks failed")


if __name__ == "__main__":
    cli()
