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
@click.option("--profile", "with_profile", is_flag=True,
              help="Also report where the time goes: native time per op, summed by op kind and origin.")
@json_option
@click.pass_obj
def bench(term: Terminal, model: str, backend: str, threads: int, warmup: int, repeat: int, seed: int,
          with_profile: bool, as_json: bool) -> None:
    """Measure MODEL's inference latency (median, p90, min) and session-creation time."""
    import os

    from walle_core.cli.model_inputs import make_feeds
    from walle_core.cli.timing import latency_stats, time_runs

    if with_profile:
        os.environ["WALLE_PROFILE"] = "1"  # read by backends when they compile a segment
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
    if with_profile:
        report["profile"] = _profile(session, feeds)
    if as_json:
        term.print_json(report)
        return
    term.display_table(
        f"{model} ({', '.join(report['backends'])}, {threads} thread(s), {repeat} runs)",
        ["median ms", "p90 ms", "min ms", "session create ms"],
        [[f"{report['median_ms']:.3f}", f"{report['p90_ms']:.3f}", f"{report['min_ms']:.3f}", f"{load_ms:.1f}"]],
    )
    if with_profile:
        rows = [[p["kind"], str(p["count"]), f"{p['ms']:.3f}", f"{p['share']:.1%}"] for p in report["profile"]]
        term.display_table("where the time goes (mean per run)", ["op", "count", "ms", "share"], rows)


def _profile(session, feeds) -> list[dict]:
    """Mean native ms per run, summed per op kind (conv2d split by kernel and stride)."""
    plan = session.plan_for(feeds)
    types = plan.graph.types
    totals: dict[str, list[float]] = {}
    for sched, exe in zip(plan.schedule.segments, plan.executables):
        nodes = sched.segment.nodes
        for node, entry in zip(nodes, exe.profile()):
            kind = node.op.value
            if kind == "conv2d":
                w = types[node.inputs[1]].shape
                dw = " depthwise" if node.attrs.groups > 1 and node.attrs.groups == types[node.inputs[0]].shape[1] else ""
                kind = f"conv2d {w[2]}x{w[3]}/s{node.attrs.strides[0]}{dw}"
            acc = totals.setdefault(f"{sched.backend.name}:{kind}", [0.0, 0])
            acc[0] += entry["ms"]
            acc[1] += 1
    total = sum(ms for ms, _ in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return [{"kind": k, "count": int(n), "ms": round(ms, 4), "share": ms / total} for k, (ms, n) in ranked]
