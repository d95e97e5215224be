"""Throughput of the container on compute-bound tasks: 1 vs 2 worker threads vs a pool of
worker processes doing the same work (run: ``python -m walle_core.container.bench``).

Eight tasks each run a small CNN (``walle_core.testing.models.example_cnn``) 50 times. The
tasks ship identical model files, so the container loads the model once and every thread
shares it; each pool process loads its own copy. Peak RSS is the kernel's high-water mark
(VmHWM), reset between configurations; for the pool it is the sum over its processes
(the parent included). Not a timed test: numbers depend on the machine.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

TASK_SOURCE = '''
def run(ctx, inputs):
    logits = ctx.model("cnn").run({"image": inputs["image"]})["logits"]
    return {"top": logits.argmax(axis=1)}
'''


def _peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM of a process in MiB (Linux); 0 where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # 5: reset the peak RSS to the current RSS (proc(5))
    except OSError:
        pass


def _make_tasks(root: Path, model: bytes, count: int) -> list[Path]:
    dirs = []
    for i in range(count):
        task = root / f"cnn{i}"
        task.mkdir()
        (task / "cnn.onnx").write_bytes(model)
        (task / "main.py").write_text(TASK_SOURCE)
        (task / "task.toml").write_text(f'name = "cnn{i}"\nversion = "1"\nentry = "main.py"\n'
                                        'models = ["cnn.onnx"]\n')
        dirs.append(task)
    return dirs


def _run_container(dirs: list[Path], workers: int, image: np.ndarray, runs: int, state: Path) -> dict[str, Any]:
    from walle_core.container import Container

    _reset_peak_rss()
    with Container(workers=workers, state_dir=state, queue_size=len(dirs) * runs) as box:
        tasks = [box.load(d) for d in dirs]
        box.submit(tasks[0], {"image": image}).result()  # warm-up: plans are built on first run
        start = time.perf_counter()
        handles = [box.submit(task, {"image": image}) for _ in range(runs) for task in tasks]
        for handle in handles:
            handle.result()
        wall = time.perf_counter() - start
    latencies = [h.latency_s for h in handles if h.latency_s is not None]
    return {"wall_s": wall, "latencies": latencies, "peak_rss_mb": _peak_rss_mb()}


def _pool_worker(model: bytes, image: np.ndarray, runs: int, results: Any) -> None:
    import walle_core

    session = walle_core.load(model, threads=1)
    session.run({"image": image})
    latencies = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run({"image": image})["logits"].argmax(axis=1)
        latencies.append(time.perf_counter() - start)
    results.put((latencies, _peak_rss_mb()))


def _run_pool(model: bytes, processes: int, tasks: int, image: np.ndarray, runs: int) -> dict[str, Any]:
    """``processes`` workers share the tasks' runs evenly; each worker loads its own model."""
    mp = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    results = mp.Queue()
    share = tasks * runs // processes
    start = time.perf_counter()
    workers = [mp.Process(target=_pool_worker, args=(model, image, share, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get() for _ in workers]
    wall = time.perf_counter() - start
    for worker in workers:
        worker.join()
    return {"wall_s": wall, "latencies": [t for lat, _ in outcomes for t in lat],
            "peak_rss_mb": _peak_rss_mb() + sum(peak for _, peak in outcomes)}


@click.command()
@click.option("--tasks", type=int, default=8, show_default=True)
@click.option("--runs", type=int, default=50, show_default=True, help="Runs per task.")
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--batch", type=int, default=4, show_default=True)
def main(tasks: int, runs: int, image_size: int, batch: int) -> None:
    """Print the throughput table: container with 1 and 2 worker threads, process pool of 2."""
    from rich.console import Console
    from rich.table import Table

    from walle_core.container.stats import percentiles_ms
    from walle_core.testing.models import example_cnn

    model = example_cnn(image_size=image_size).SerializeToString()
    image = np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = _make_tasks(Path(tmp), model, tasks)
        for label, workers in (("1 thread", 1), ("2 threads", 2)):
            rows.append((label, _run_container(dirs, workers, image, runs, Path(tmp) / "state")))
        rows.append(("2 processes", _run_pool(model, 2, tasks, image, runs)))
    total = tasks * runs
    base = total / rows[0][1]["wall_s"]
    table = Table(title=f"{tasks} tasks x {runs} runs of example_cnn({image_size}px, batch {batch})")
    for column in ("workers", "wall s", "runs/s", "vs 1 thread", "p50 ms", "p99 ms", "peak RSS MiB"):
        table.add_column(column)
    for label, result in rows:
        throughput = total / result["wall_s"]
        pct = percentiles_ms(result["latencies"])
        table.add_row(label, f"{result['wall_s']:.2f}", f"{throughput:.1f}", f"{throughput / base:.2f}x",
                      f"{pct['p50']:.2f}", f"{pct['p99']:.2f}", f"{result['peak_rss_mb']:.0f}")
    console = Console()
    console.print(table)
    console.print("Threads: the container (tasks loaded before timing). Processes: a plain "
                  "multiprocessing pool whose wall time includes starting it and loading one model "
                  "copy per process. Latency is per run, queueing excluded.")


if __name__ == "__main__":
    main()
