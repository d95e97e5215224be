"""`walle run`: one inference on given or random inputs, with a summary of the outputs."""

from __future__ import annotations

import time

import click

from walle_core.cli.options import backend_option, json_option, open_session, threads_option
from walle_core.cli.terminal import Terminal


@click.command()
@click.argument("model")
@click.option("--input", "-i", "input_files", multiple=True, metavar="NAME=FILE.npy",
              help="Feed an input from a .npy file (repeatable); other inputs get seeded random data.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@backend_option
@threads_option
@json_option
@click.pass_obj
def run(term: Terminal, model: str, input_files: tuple[str, ...], seed: int, backend: str, threads: int,
        as_json: bool) -> None:
    """Run MODEL once and summarise its outputs (symbolic dimensions of random inputs are 1)."""
    from walle_core.cli.model_inputs import (
        SUMMARY_COLUMNS,
        make_feeds,
        read_input_files,
        summarize,
        summary_row,
    )

    given = read_input_files(input_files)
    with term.status(f"loading {model}"):
        session, load_ms = open_session(model, backend, threads)
    feeds = make_feeds(session.inputs, given, seed)
    with term.status("running"):
        start = time.perf_counter()
        outputs = session.run(feeds)
        run_ms = (time.perf_counter() - start) * 1e3
    report = {
        "model": model,
        "backends": [b.name for b in session.backends],
        "threads": threads,
        "inputs": [{"name": name, "shape": list(a.shape), "dtype": a.dtype.name, "random": name not in given}
                   for name, a in feeds.items()],
        "outputs": [summarize(name, array) for name, array in outputs.items()],
        "load_ms": round(load_ms, 3),
        "run_ms": round(run_ms, 3),
    }
    if as_json:
        term.print_json(report)
        return
    term.display_table(f"Outputs of {model}", SUMMARY_COLUMNS, [summary_row(s) for s in report["outputs"]])
    term.display(f"backends {', '.join(report['backends'])}; load {load_ms:.2f} ms; run {run_ms:.2f} ms "
                 "(the first run includes planning for models with symbolic shapes)")
