"""`walle plan`: which backend runs each atomic op, what the cost model predicts for it and,
with --measure, what it really takes — the evidence behind the semi-auto search."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

import click

from walle_core.cli.options import json_option, parse_backend, threads_option
from walle_core.cli.terminal import Terminal

if TYPE_CHECKING:
    from walle_core.session import Session


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 4)


def _algorithm(backend: Any, node: Any, types: Any) -> str:
    """A backend may name the kernel variant it picked through an optional
    ``algorithm(node, types)`` method; "-" when it does not."""
    pick = getattr(backend, "algorithm", None)
    name = pick(node, types) if callable(pick) else None
    return str(name) if name else "-"


def _static_feeds(session: Session) -> dict[str, Any]:
    """Bare shapes for every input (symbolic dimensions become 1, sequences empty)."""
    from walle_core.cli.model_inputs import concrete_shape

    return {spec.name: [] if spec.is_sequence else None if spec.kind.startswith("optional")
            else concrete_shape(spec) for spec in session.inputs}


def plan_report(session: Session, measure: bool) -> dict[str, Any]:
    """The per-op report of ``session``'s plan (see the command's help for the keys)."""
    from walle_core.search import (
        CostModel,
        PlanCache,
        ProfileCache,
        node_times,
        predicted_times,
        rank_correlation,
        time_plans,
    )

    plan = session.plan_for(_static_feeds(session))
    graph, backends = plan.graph, session.backends
    index = {b.name: j for j, b in enumerate(backends)}
    choice = [index[name] for name in plan.schedule.assignment]
    profiles = ProfileCache()
    model = CostModel(backends, {b.name: profiles.get(b) for b in backends})
    predicted, transfers = predicted_times(graph, backends, choice, model)
    measured = node_times(graph, backends, choice) if measure else None
    ops = [{
        "op": node.op.value,
        "origin": node.origin,
        "backend": backends[j].name,
        "algorithm": _algorithm(backends[j], node, graph.types),
        "predicted_ms": _ms(predicted[i]),
        "measured_ms": _ms(measured[i]) if measured else None,
    } for i, (node, j) in enumerate(zip(graph.nodes, choice))]
    report: dict[str, Any] = {
        "backends": [b.name for b in backends],
        "ops": ops,
        "copies": plan.copies,
        "predicted_total_ms": _ms(sum(predicted) + transfers),
        "measured_total_ms": _ms(time_plans(graph, backends, {"plan": choice}, 3, 10)["plan"]) if measure else None,
        "rank_correlation": None,
    }
    if measured:
        rho = rank_correlation(predicted, measured)
        report["rank_correlation"] = None if math.isnan(rho) else round(rho, 4)
        decision = PlanCache().get(PlanCache.key(graph, backends))
        if decision is not None:
            report["chosen"] = decision.winner
            report["candidates_ms"] = {label: _ms(t) for label, t in decision.timings.items()}
    return report


@click.command()
@click.argument("model")
@click.option("--backends", "-b", "backend", default="auto", show_default=True,
              help="'auto' or a comma-separated list of backends to choose from.")
@click.option("--measure", is_flag=True,
              help="Choose among the candidate plans by timing them, and time every op.")
@threads_option
@json_option
@click.pass_obj
def plan(term: Terminal, model: str, backend: str, measure: bool, threads: int, as_json: bool) -> None:
    """Show MODEL's per-op backend assignment with predicted (and measured) times."""
    import walle_core as wc

    if not os.path.isfile(model):
        raise wc.ModelError(f"model file not found: {model}")
    with term.status(f"planning {model}"):
        start = time.perf_counter()
        session = wc.load(model, backend=parse_backend(backend), threads=threads,
                          search="measure" if measure else "cost")
        load_ms = (time.perf_counter() - start) * 1e3
        report = {"model": model, "threads": threads, "session_create_ms": round(load_ms, 3),
                  **plan_report(session, measure)}
    if as_json:
        term.print_json(report)
        return

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    term.display_table(
        f"{model} ({', '.join(report['backends'])}, {threads} thread(s))",
        ["#", "op", "origin", "backend", "algorithm", "predicted ms", "measured ms"],
        [[i, op["op"], op["origin"], op["backend"], op["algorithm"], fmt(op["predicted_ms"]),
          fmt(op["measured_ms"])] for i, op in enumerate(report["ops"])],
    )
    term.display(f"predicted total: {fmt(report['predicted_total_ms'])} ms   "
                 f"measured total: {fmt(report['measured_total_ms'])} ms   "
                 f"cross-backend copies: {report['copies']}   session create: {load_ms:.1f} ms")
    if measure:
        rho = report["rank_correlation"]
        term.display(f"rank correlation (Spearman) of predicted vs measured per-op times: "
                     f"{'-' if rho is None else f'{rho:.3f}'}")
        if "candidates_ms" in report:
            timings = ", ".join(f"{label} {ms:.3f} ms" for label, ms in report["candidates_ms"].items())
            term.display(f"candidate plans: {timings}; chosen: {report['chosen']}")
