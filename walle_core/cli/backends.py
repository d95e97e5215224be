"""`walle backends`: every registered backend, whether it can run here, and its ops."""

from __future__ import annotations

from typing import Any

import click

from walle_core.cli.options import json_option
from walle_core.cli.terminal import Terminal


def backend_report() -> list[dict[str, Any]]:
    """One entry per registered backend, plus one per installed plugin that failed to load
    (so a broken native wheel shows up with its import error instead of silently vanishing)."""
    from walle_core import plugins

    report = []
    for cls in plugins.backend_classes():
        avail = cls.availability()
        report.append({
            "name": cls.name,
            "available": bool(avail.available),
            "reason": "" if avail.available else avail.reason,
            "device": avail.device,
            "priority": cls.priority,
            "ops": sorted(op.value for op in cls.supported_ops()),
        })
    known = {entry["name"] for entry in report}
    for name, error in sorted(plugins.broken_plugins().items()):
        if name not in known:
            report.append({"name": name, "available": False, "reason": f"plugin failed to load: {error}",
                           "device": "", "priority": None, "ops": []})
    return report


@click.command()
@json_option
@click.pass_obj
def backends(term: Terminal, as_json: bool) -> None:
    """List backends in auto-selection order."""
    report = backend_report()
    if as_json:
        term.print_json(report)
        return
    rows = [
        [entry["name"], "yes" if entry["available"] else "no", entry["priority"],
         entry["device"] or entry["reason"], len(entry["ops"])]
        for entry in report
    ]
    term.display_table("Backends", ["name", "available", "priority", "device / reason", "ops"], rows)
