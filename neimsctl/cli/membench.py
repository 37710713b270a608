"""``neimsctl membench``: estimate, measure and compare training memory."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from neimsctl.cli._common import app, command, finite, setup_logging, usage_error

CMD = "membench"


class Mode(str, Enum):
    estimate = "estimate"
    benchmark = "benchmark"
    compare = "compare"


class Model(str, Enum):
    student = "student"
    teacher = "teacher"


def _mib(b: float) -> str:
    """A size in MiB for a table cell: no thousands separator ("1014.6", not "1,014.6"), so
    that cut, awk, sort -n and pandas read the tab-separated columns as numbers."""
    return f"{b / 2**20:.1f}"


def _print_estimate(res: dict[str, Any]) -> None:
    print(f"# membench estimate: {res['dataset_size']:,} records, RAM {res['ram_gb']:g} GiB (sizes in MiB)")
    cols = ("model", "dataset", "batch", "runtime", "data", "model+optim", "activations", "batches",
            "total", "%RAM", "verdict")
    print("\t".join(cols))
    for r in res["settings"]:
        print("\t".join([r["model"], r["dataset"], str(r["batch_size"]), _mib(r["runtime"]), _mib(r["data"]),
                         _mib(r["model_state"]), _mib(r["activations"]), _mib(r["batches"]),
                         _mib(r["total"]), f"{100 * r['share_of_ram']:.0f}", r["verdict"]]))
    print("# constants:")
    for k, v in res["constants"].items():
        print(f"#   {k}: {v}")


def _print_runs(runs: list[dict[str, Any]]) -> None:
    cols = ("model", "mode", "rows", "batch", "rss_start", "dataset_delta", "iter_delta", "rss_peak",
            "metadata", "build_s", "iter_s", "batch_us")
    print("# membench: RSS in MiB (psutil); deltas over the RSS after imports")
    print("\t".join(cols))
    for r in runs:
        print("\t".join([r["model"], r["mode"], str(r["rows"]), str(r["batch_size"]), _mib(r["rss_start"]),
                         _mib(r["dataset_delta"]), _mib(r["iter_delta"]), _mib(r["rss_peak"]),
                         _mib(r["metadata_bytes"]), f"{r['build_s']:.2f}", f"{r['iter_s']:.2f}",
                         f"{r['batch_us']:.0f}"]))


@app.command(CMD)
def membench_cli(
    mode: Annotated[Mode, typer.Option("--mode", help="estimate | benchmark | compare.")] = Mode.estimate,
    ram_gb: Annotated[float, typer.Option("--ram-gb", min=0.1, callback=finite, help="RAM to plan for, GiB.")] = 32.0,
    dataset_size: Annotated[int, typer.Option("--dataset-size", min=1,
                                              help="Records to plan for (estimate).")] = 300_000,
    shards: Annotated[list[Path] | None, typer.Option(
        "--shards", exists=True, dir_okay=False,
        help="Feature shards to measure (repeatable); default: the bundled sample, replicated.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Rows to benchmark.")] = 2000,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Batch size (estimate default: 32 and 256; benchmark: 32).")] = None,
    model: Annotated[Model | None, typer.Option(
        "--model", help="student | teacher (estimate default: both; benchmark: student).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
) -> None:
    """Estimate, measure or compare the memory of training data and models. See neimsctl-membench(1)."""
    setup_logging(quiet=quiet)
    with command(CMD):
        from neimsctl.data import membench as mb

        if mode is Mode.estimate:
            import h5py  # noqa: F401  (part of the measured runtime)
            import torch  # noqa: F401

            res: Any = mb.estimate(ram_gb=ram_gb, dataset_size=dataset_size,
                                   models=[model.value] if model else ["student", "teacher"],
                                   batch_sizes=[batch_size] if batch_size else [32, 256],
                                   shards=list(shards) if shards else None)
            printer = _print_estimate
        else:
            kind = (model or Model.student).value
            if shards:
                import h5py

                for s in shards:
                    with h5py.File(s, "r") as f:
                        if f.attrs.get("mode") != kind:
                            usage_error(CMD, f"{s}: shard mode is {f.attrs.get('mode')!r}; "
                                             f"pass --model {f.attrs.get('mode')}")
            args = dict(shards=list(shards) if shards else None, samples=samples,
                        batch_size=batch_size or 32, model=kind)
            res = [mb.benchmark(**args)] if mode is Mode.benchmark else mb.compare(**args)
            printer = _print_runs
        if as_json:
            print(json.dumps(res, indent=1, default=str))
        else:
            printer(res)
