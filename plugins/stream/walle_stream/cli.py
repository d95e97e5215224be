"""``walle stream``: replay a JSONL trace through the engine, and generate traces.

Heavy imports happen inside the commands so ``walle --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group("stream")
def stream_group() -> None:
    """On-device event stream processing: shared triggers, windowed features."""


@stream_group.command()
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tasks", "task_dirs", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="A task directory (with task.toml) or a directory of them; repeatable.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite state file: resume from its offset, commit to it as events are processed.")
@click.option("--no-run", is_flag=True, help="Only match and compute features; submit nothing to the container.")
@click.option("--key-name", default="user", show_default=True,
              help="What the events' 'key' field stands for (a trigger's key = NAME partitions by it).")
@click.option("--lateness-ms", type=click.IntRange(min=0), default=5_000, show_default=True,
              help="Allowed lateness: the watermark is the newest ts minus this.")
@click.option("--late", "late_policy", type=click.Choice(["drop", "include"]), default="drop", show_default=True,
              help="What to do with events older than the watermark.")
@click.option("--commit-every", type=click.IntRange(min=1), default=1_000, show_default=True,
              help="Commit state every N input lines.")
@click.option("--record-fires", is_flag=True, help="Also store every firing (with features) in the state file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Lines matched as one batch: larger is faster per event, but firings wait for their "
                   "batch (1: event by event). Results do not depend on it.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N input lines.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Container worker threads (when tasks are run).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def replay(term, events: Path, task_dirs: tuple[Path, ...], state: Path | None, no_run: bool, key_name: str,
           lateness_ms: int, late_policy: str, commit_every: int, record_fires: bool, batch_size: int,
           limit: int | None, workers: int, as_json: bool) -> None:
    """Replay EVENTS (JSONL) through the stream engine with the tasks' triggers and features."""
    from walle_stream.engine import EngineConfig, StreamEngine
    from walle_stream.tasks import load_tasks

    tasks = load_tasks(task_dirs)
    config = EngineConfig(key_name=key_name, allowed_lateness_ms=lateness_ms, late_policy=late_policy,
                          max_disorder_ms=max(lateness_ms, EngineConfig.max_disorder_ms),
                          commit_every=commit_every, record_fires=record_fires, batch_size=batch_size)
    container, sink, note = None, None, ""
    if not no_run:
        container, sink, note = _open_container(tasks, workers)
    engine = StreamEngine(tasks, config, sinks=[sink] if sink else [], state_path=state)
    started_events, started_rejected = engine.events, engine.validator.rejected_total
    t0 = time.perf_counter()
    try:
        with term.status(f"replaying {events.name}"):
            lines = engine.run_jsonl(events, limit)
        elapsed = time.perf_counter() - t0
    finally:
        engine.close()
    runs = None
    if container is not None:
        try:
            runs = sink.collect()
        finally:
            container.close()
    stats = engine.stats()
    processed = stats["events"] - started_events
    report = {
        "events": stats["events"],
        "rejected": stats["rejected"],
        "rejected_by_reason": stats["rejected_by_reason"],
        "late_dropped": stats["late_dropped"],
        "lines_this_run": lines,
        "events_this_run": processed,
        "rejected_this_run": stats["rejected"] - started_rejected,
        "seconds": round(elapsed, 4),
        "events_per_s": round(lines / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": stats["latency_ms"],
        "features_produced": stats["features_produced"],
        "tasks": stats["tasks"],
        "ran_tasks": runs is not None,
        "state": str(state) if state else None,
        "offset": stats["offset"],
        "matchers": stats["matchers"],
    }
    if runs is not None:
        for name, counts in runs.items():
            report["tasks"][name]["runs"] = counts
    if note:
        report["note"] = note
    if as_json:
        term.print_json(report)
        return
    if note:
        term.display(note)
    term.display(f"{report['events']} events, {report['rejected']} rejected, {report['late_dropped']} late "
                 f"dropped; {report['events_per_s']:.0f} lines/s this run; fire latency p50 "
                 f"{report['latency_ms']['p50']} ms, p99 {report['latency_ms']['p99']} ms; matcher "
                 + ", ".join(f"{field}: {kind}" for field, kind in sorted(report["matchers"].items())))
    rows = []
    for name, info in report["tasks"].items():
        rows.append([name, info["fired"], ", ".join(f"{k}={v}" for k, v in sorted(info.get("runs", {}).items()))])
    term.display_table("triggers", ["task", "fired", "runs"], rows)
    if report["rejected_by_reason"]:
        term.display_table("rejected events", ["reason", "count"], sorted(report["rejected_by_reason"].items()))


def _open_container(tasks, workers: int):
    """A container and a sink submitting to it, or (None, None, why not)."""
    try:
        from walle_core.container import Container
    except ImportError:
        return None, None, "note: walle_core.container is not available; tasks were matched but not run"
    from walle_stream.container import ContainerSink

    container = Container(workers=workers)
    try:
        return container, ContainerSink(container, tasks), ""
    except Exception:
        container.close()
        raise


@stream_group.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSONL file to write.")
@click.option("--events", "count", type=click.IntRange(min=0), default=100_000, show_default=True)
@click.option("--users", type=click.IntRange(min=1), default=1_000, show_default=True)
@click.option("--products", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--skew", type=click.FloatRange(min=0.0), default=1.1, show_default=True,
              help="Zipf exponent of user and product popularity.")
@click.option("--late-rate", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True)
@click.option("--bad-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of malformed events (to exercise validation).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@click.pass_obj
def gen(term, out: Path, count: int, users: int, products: int, skew: float, late_rate: float, bad_rate: float,
        seed: int, as_json: bool) -> None:
    """Write a synthetic e-commerce behaviour trace (seeded, Zipf-skewed users and products)."""
    from walle_stream.gen import generate_events, write_jsonl

    with term.status(f"writing {out}"):
        written = write_jsonl(out, generate_events(count, users, seed, skew, products, late_rate, bad_rate))
    summary = {"out": str(out), "events": written, "users": users, "seed": seed}
    if as_json:
        term.print_json(summary)
    else:
        term.display(f"wrote {written} events for {users} users to {out}")
