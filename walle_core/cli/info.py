"""`walle info`: what a model is made of, before and after decomposition."""

from __future__ import annotations

import click

from walle_core.cli.options import backend_option, json_option, open_session, threads_option
from walle_core.cli.terminal import Terminal


def _histogram_rows(hist: dict[str, int]) -> list[list[object]]:
    return [[name, count] for name, count in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))]


@click.command()
@click.argument("model")
@backend_option
@threads_option
@json_option
@click.pass_obj
def info(term: Terminal, model: str, backend: str, threads: int, as_json: bool) -> None:
    """Op histograms of MODEL and how each ONNX op type decomposed into atomic ops."""
    with term.status(f"loading {model}"):
        session, _ = open_session(model, backend, threads)
        report = {"model": model, **session.info()}
    if as_json:
        term.print_json(report)
        return
    shapes = ", ".join(f"{i['name']}: {i['dtype']}{list(i['shape'])}" for i in report["inputs"])
    term.display(f"{model}\n  inputs:  {shapes}\n  outputs: {', '.join(report['outputs'])}")
    term.display_table("ONNX ops", ["op type", "count"], _histogram_rows(report["onnx_ops"]))
    term.display_table("Atomic ops", ["op", "count"], _histogram_rows(report["atomic_ops"]))
    rows = [
        [onnx_op, ", ".join(f"{op} x{n}" for op, n in sorted(atomic.items()))]
        for onnx_op, atomic in sorted(report["decompositions"].items())
    ]
    term.display_table("Decompositions", ["ONNX op type", "atomic ops"], rows)
    if "segments" in report:
        seg_rows = [[i, seg["backend"], seg["nodes"]] for i, seg in enumerate(report["segments"])]
        term.display_table("Segments", ["#", "backend", "nodes"], seg_rows)
