"""`walle convert`: compile an ONNX model into a memory-mappable ``.walle`` file."""

from __future__ import annotations

import os
import time

import click

from walle_core.cli.options import json_option
from walle_core.cli.terminal import Terminal


def parse_shape(pair: str) -> tuple[str, tuple[int, ...]]:
    """``name=1,3,224,224`` -> ("name", (1, 3, 224, 224)); ``name=`` is a scalar."""
    name, sep, dims = pair.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        shape = (-1,)
    if not sep or not name or any(d < 0 for d in shape):
        raise click.BadParameter(f"expected NAME=D0,D1,... with non-negative dims, got {pair!r}",
                                 param_hint="--shape")
    return name, shape


@click.command()
@click.argument("model")
@click.option("--output", "-o", required=True, metavar="FILE.walle", help="Where to write the compiled model.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,...",
              help="Shape of an input (repeatable); required for inputs with symbolic dimensions.")
@json_option
@click.pass_obj
def convert(term: Terminal, model: str, output: str, shapes: tuple[str, ...], as_json: bool) -> None:
    """Lower and optimise MODEL for one input-shape signature and save it as FILE.walle, which
    `walle_core.load` then opens by memory-mapping, skipping the ONNX import."""
    from walle_core.compiled import convert as convert_model
    from walle_core.errors import ModelError

    if not os.path.isfile(model):
        raise ModelError(f"model file not found: {model}")
    given = dict(parse_shape(pair) for pair in shapes)
    with term.status(f"converting {model}"):
        start = time.perf_counter()
        graph = convert_model(model, output, given)
        elapsed_ms = (time.perf_counter() - start) * 1e3
    report = {
        "model": model,
        "output": output,
        "inputs": [{"name": n, "dtype": graph.types[n].dtype.name, "shape": list(graph.types[n].shape)}
                   for n in graph.inputs],
        "nodes": len(graph.nodes),
        "constants": len(graph.constants),
        "constant_bytes": int(sum(c.nbytes for c in graph.constants.values())),
        "file_bytes": os.path.getsize(output),
        "convert_ms": round(elapsed_ms, 3),
    }
    if as_json:
        term.print_json(report)
        return
    shapes_text = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in report["inputs"])
    term.display(f"{output}: {report['nodes']} atomic nodes, {report['constants']} constants "
                 f"({report['constant_bytes'] / 1e6:.2f} MB), inputs {shapes_text}; {elapsed_ms:.0f} ms")
