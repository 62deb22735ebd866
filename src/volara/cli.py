"""``volara-cli``: run pipelines from config files, and run cluster workers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


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
def blockwise_worker(config_file: Path) -> None:
    """Process blocks of the task in CONFIG_FILE for the daisy server named
    in the DAISY_CONTEXT environment variable, until none are left."""
    from .blockwise.registry import load_task, read_config_file

    task = load_task(read_config_file(config_file))
    task.process_blocks()


@cli.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--serial", is_flag=True, help="Process blocks one by one in this process.")
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
    states = pipeline.run_blockwise(multiprocessing=not serial)
    incomplete = {
        name: state
        for name, state in states.items()
        if state.completed_count != state.total_block_count
    }
    if incomplete:
        for name, state in incomplete.items():
            click.echo(
                f"{name}: {state.failed_count} failed, {state.orphaned_count} orphaned "
                f"of {state.total_block_count} blocks",
                err=True,
            )
        sys.exit(1)


def describe_pipeline(pipeline) -> list[str]:
    """Lines describing each task of a pipeline: name, type, block count,
    outputs and upstream tasks."""
    from .blockwise.blockwise import count_blocks

    lines = []
    for task in pipeline.tasks:
        upstream = [u.task_name for u in pipeline.task_graph.predecessors(task)]
        outputs = [str(path) for path in task.output_paths] or ["-"]
        lines.append(
            f"{task.task_name} ({task.task_type}): {count_blocks(task)} blocks; "
            f"writes {', '.join(outputs)}; after {', '.join(upstream) or '-'}"
        )
    return lines


if __name__ == "__main__":
    cli()
