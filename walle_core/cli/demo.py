"""`walle demo`: build a small CNN in memory, run it with the best available backend and
with the reference backend, and show that they agree and how fast each is."""

from __future__ import annotations

import click

from walle_core.cli.options import json_option
from walle_core.cli.terminal import Terminal

#: a small batch keeps the NumPy reference backend well under a second per run
BATCH = 4
WARMUP = 2
REPEAT = 10


@click.command()
@click.option("--threads", "-t", type=click.IntRange(min=1), default=1, show_default=True)
@json_option
@click.pass_obj
def demo(term: Terminal, threads: int, as_json: bool) -> None:
    """Example CNN (conv / batch-norm / relu / pool / gemm): auto backend vs reference."""
    import time

    import numpy as np

    import walle_core as wc
    from walle_core.cli.model_inputs import SUMMARY_COLUMNS, summarize, summary_row
    from walle_core.cli.timing import latency_stats, time_runs
    from walle_core.testing.models import example_cnn

    model = example_cnn(seed=0)
    image = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    runs = []
    outputs = {}
    for choice in ("auto", "reference"):
        with term.status(f"loading the example CNN with backend={choice}"):
            start = time.perf_counter()
            session = wc.load(model, backend=choice, threads=threads)
            load_ms = (time.perf_counter() - start) * 1e3
        logits = session.run({"image": image})["logits"]
        samples = time_runs(lambda s=session: s.run({"image": image}), WARMUP,
                            term.track(range(REPEAT), f"timing backend={choice}"))
        segments = session.plan_for({"image": image}).segments
        runs.append({
            "backend": choice,
            "segments": [{"backend": name, "nodes": len(nodes)} for name, nodes in segments],
            "load_ms": round(load_ms, 3),
            **latency_stats(samples),
        })
        outputs[choice] = logits
    for entry in runs:
        entry["max_abs_diff"] = float(np.max(np.abs(outputs[entry["backend"]] - outputs["reference"])))
    logits = outputs["auto"]
    report = {
        "model": "example_cnn",
        "input": {"name": "image", "shape": list(image.shape), "dtype": image.dtype.name},
        "outputs": [summarize("logits", logits)],
        "predictions": [int(k) for k in logits.argmax(axis=1)],
        "runs": runs,
        "threads": threads,
    }
    if as_json:
        term.print_json(report)
        return
    term.display_table("Example CNN outputs (backend=auto)", SUMMARY_COLUMNS,
                       [summary_row(s) for s in report["outputs"]])
    term.display(f"predicted classes: {report['predictions']}")
    rows = [
        [entry["backend"], " + ".join(f"{s['backend']}({s['nodes']})" for s in entry["segments"]),
         f"{entry['load_ms']:.1f}", f"{entry['median_ms']:.3f}", f"{entry['p90_ms']:.3f}",
         f"{entry['max_abs_diff']:.2e}"]
        for entry in runs
    ]
    term.display_table(f"Timing, batch {BATCH}, {threads} thread(s), {REPEAT} runs",
                       ["backend", "segments (nodes)", "load ms", "median ms", "p90 ms", "max |diff| vs ref"],
                       rows)
