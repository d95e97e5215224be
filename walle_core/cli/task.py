"""`walle task`: run compute-container tasks and check task directories (docs/tasks.md)."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import click

from walle_core.cli.options import backend_option, json_option, parse_backend
from walle_core.cli.terminal import Terminal

RUN_COLUMNS = ("task", "mode", "status", "runs", "ok", "p50 ms", "p99 ms", "error")


@click.group("task")
@click.pass_context
def task_group(ctx: click.Context) -> None:
    """Run and check compute-container tasks (directories with a task.toml)."""
    ctx.ensure_object(Terminal)


@task_group.command("run")
@click.argument("directories", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker threads (and worker processes for process-mode tasks).")
@click.option("--repeat", "-r", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of every task.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, exists=True),
              help="A .npz file whose arrays are every task's inputs (default: no inputs).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where tasks keep their key-value stores and scratch files "
                   "(default: $WALLE_STATE_DIR or ~/.local/state/walle/tasks).")
@backend_option
@json_option
@click.pass_obj
def run(term: Terminal, directories: tuple[str, ...], concurrency: int, repeat: int, inputs_file: str | None,
        state_dir: str | None, backend: str, as_json: bool) -> None:
    """Run every task in DIRECTORIES REPEAT times, CONCURRENCY at a time, and report per-task
    status and latency. Exits with 1 if any run did not succeed."""
    from walle_core.container import Container
    from walle_core.errors import WalleError

    try:
        inputs = _read_inputs(inputs_file)
        with Container(workers=concurrency, state_dir=state_dir, queue_size=max(64, 2 * concurrency),
                       backend=parse_backend(backend)) as container:  # type: ignore[arg-type]
            with term.status("loading tasks"):
                tasks = [container.load(d) for d in directories]
            start = time.perf_counter()
            handles = [container.submit(task, inputs) for _ in range(repeat) for task in tasks]
            for handle in term.track(handles, "running"):
                handle.wait()
            wall_s = time.perf_counter() - start
    except WalleError as exc:
        _fail(term, exc, as_json)
    report = {
        "tasks": [_summarize(task, [h for h in handles if h.task is task]) for task in tasks],
        "throughput_per_s": round(len(handles) / wall_s, 3) if wall_s > 0 else 0.0,
        "concurrency": concurrency,
        "runs": len(handles),
        "wall_s": round(wall_s, 4),
    }
    if as_json:
        term.print_json(report)
    else:
        rows = [(t["name"], t["mode"], t["status"], t["runs"], t["ok"], t["latency_ms"]["p50"],
                 t["latency_ms"]["p99"], t["error"] or "") for t in report["tasks"]]
        term.display_table("Tasks", RUN_COLUMNS, rows)
        term.display(f"{report['runs']} runs in {wall_s:.3f} s: {report['throughput_per_s']:.1f} runs/s "
                     f"with concurrency {concurrency}")
    if any(t["status"] != "ok" for t in report["tasks"]):
        raise click.exceptions.Exit(1)


@task_group.command("check")
@click.argument("directory", type=click.Path(file_okay=False))
@backend_option
@json_option
@click.pass_obj
def check(term: Terminal, directory: str, backend: str, as_json: bool) -> None:
    """Validate the task in DIRECTORY: its task.toml, entry script (imported for thread-mode
    tasks, only compiled for process-mode ones) and models (loaded)."""
    from walle_core.container import load_task
    from walle_core.container.task import ModelCache
    from walle_core.errors import WalleError

    try:
        task = load_task(directory, models=ModelCache(parse_backend(backend)))  # type: ignore[arg-type]
    except WalleError as exc:
        _fail(term, exc, as_json)
    task.close()
    spec = task.spec
    report = {
        "ok": True,
        "name": spec.name,
        "version": spec.version,
        "entry": spec.entry.relative_to(spec.directory).as_posix(),
        "mode": spec.mode,
        "models": [
            {"name": name, "file": spec.models[name].relative_to(spec.directory).as_posix(),
             "inputs": [{"name": i.name, "dtype": i.dtype.name, "shape": list(i.shape)} for i in session.inputs],
             "outputs": list(session.output_names)}
            for name, session in task.models.items()
        ],
        "limits": {"timeout_s": spec.limits.timeout_s, "memory_mb": spec.limits.memory_mb},
        "trigger": spec.trigger,
        "config_keys": sorted(spec.config),
    }
    if as_json:
        term.print_json(report)
        return
    limits = ", ".join(f"{k} = {v}" for k, v in report["limits"].items() if v is not None) or "none"
    term.display(f"task {spec.name} {spec.version} is valid: entry {report['entry']}, {spec.mode} mode, "
                 f"limits {limits}")
    if report["models"]:
        term.display_table("Models", ("name", "file", "inputs", "outputs"), [
            (m["name"], m["file"], ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in m["inputs"]),
             ", ".join(m["outputs"])) for m in report["models"]])


def _read_inputs(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import numpy as np

    from walle_core.errors import WalleError

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise WalleError(f"--inputs {path}: not a readable .npz file: {exc}") from None


def _summarize(task: Any, handles: list[Any]) -> dict[str, Any]:
    """One row of the report: "ok" only if every run succeeded, else the first failure."""
    from walle_core.container.stats import percentiles_ms

    failures = [h for h in handles if h.status != "ok"]
    ok_latencies = [h.latency_s for h in handles if h.status == "ok" and h.latency_s is not None]
    latencies = ok_latencies or [h.latency_s for h in handles if h.latency_s is not None]
    first = failures[0] if failures else None
    error = None
    if first is not None:
        try:
            first.result(0)
        except Exception as exc:  # noqa: BLE001 -- TaskFailed; its message is the report
            error = getattr(exc, "message", str(exc))
    return {
        "name": task.name,
        "mode": task.mode,
        "status": first.status if first is not None else "ok",
        "runs": len(handles),
        "ok": len(handles) - len(failures),
        "latency_ms": {k: v for k, v in percentiles_ms(latencies).items() if k in ("p50", "p99")},
        "error": error,
    }


def _fail(term: Terminal, exc: Exception, as_json: bool) -> NoReturn:
    """Report a task that cannot be loaded (file and field are in the message) and exit 1."""
    if as_json:
        term.print_json({"ok": False, "error": str(exc), "file": getattr(exc, "path", None),
                         "field": getattr(exc, "field", None)})
    else:
        term.display_error(str(exc))
    raise click.exceptions.Exit(1)
