"""`walle bench`: latency of repeated runs on seeded random inputs."""

from __future__ import annotations

import click

from walle_core.cli.options import backend_option, json_option, open_session, threads_option
from walle_core.cli.terminal import Terminal


@click.command()
@click.argument("model")
@backend_option
@threads_option
@click.option("--warmup", "-w", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@json_option
@click.pass_obj
def bench(term: Terminal, model: str, backend: str, threads: int, warmup: int, repeat: int, seed: int,
          as_json: bool) -> None:
    """Measure MODEL's inference latency (median, p90, min) and session-creation time."""
    from walle_core.cli.model_inputs import make_feeds
    from walle_core.cli.timing import latency_stats, time_runs

    with term.status(f"loading {model}"):
        session, load_ms = open_session(model, backend, threads)
    feeds = make_feeds(session.inputs, {}, seed)
    samples = time_runs(lambda: session.run(feeds), warmup, term.track(range(repeat), "benchmarking"))
    report = {
        "model": model,
        "backends": [b.name for b in session.backends],
        "threads": threads,
        "warmup": warmup,
        "repeat": repeat,
        "session_create_ms": round(load_ms, 3),
        **latency_stats(samples),
    }
    if as_json:
        term.print_json(report)
        return
    term.display_table(
        f"{model} ({', '.join(report['backends'])}, {threads} thread(s), {repeat} runs)",
        ["median ms", "p90 ms", "min ms", "session create ms"],
        [[f"{report['median_ms']:.3f}", f"{report['p90_ms']:.3f}", f"{report['min_ms']:.3f}", f"{load_ms:.1f}"]],
    )
