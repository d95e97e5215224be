"""What the demo shows: a rich live view while it runs and a summary table at the end.

The view only reads :class:`~walle_deploy.demo.scenario.DemoState`; it never drives the
scenario, so the same run works headless (``--json``, or output piped to a file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.live import Live

    from walle_deploy.demo.scenario import DemoState

#: the newest lines of the timeline shown live, so the whole view fits a 24-line terminal
LOG_LINES = 6
STATE_STYLE = {"active": "yellow", "completed": "green", "aborted": "bold red", "rolled_back": "magenta"}


def render(state: DemoState) -> Group:
    """The whole screen for one moment of the demo."""
    header = Text.assemble(("walle demo", "bold"), "  ", (state.phase, "cyan"),
                           f"   {state.elapsed_s:5.1f} s / {state.config.duration_s:.0f} s")
    return Group(header, _rollout_table(state), _fleet_table(state),
                 Panel("\n".join(list(state.log)[-LOG_LINES:]) or "-", title="what happened", title_align="left"))


def _rollout_table(state: DemoState) -> Table:
    table = Table(title="Rollout (installed / targeted per stage, failed in red)", title_justify="left")
    for column in ("release", "version", "state"):
        table.add_column(column)
    stage_names = [s["name"] for s in state.releases[0]["stages"]] if state.releases else []
    for name in stage_names:
        table.add_column(name, justify="right")
    for release in state.releases:
        cells: list[Any] = [str(release["release"]), release["version"],
                            Text(release["state"], style=STATE_STYLE.get(release["state"], ""))]
        for i, stage in enumerate(release["stages"]):
            reached = i <= release["stage_index"]
            cell = Text(f"{stage['installed']}/{stage['targeted']}", style="" if reached else "dim")
            if stage["failed"]:
                cell.append(f" ✗{stage['failed']}", style="red")
            cells.append(cell)
        table.add_row(*cells)
    return table


def _fleet_table(state: DemoState) -> Panel:
    """Two label/value column pairs, so the view fits an 80-column terminal."""
    grid = Table.grid(padding=(0, 2))
    for justify in ("left", "right", "left", "right"):
        grid.add_column(justify=justify)  # type: ignore[arg-type]
    fleet = state.fleet
    if fleet is not None:
        stats = fleet.stats
        running: dict[str, int] = {}
        for device in fleet.devices:
            running[device.active_version or "none"] = running.get(device.active_version or "none", 0) + 1
        errors = len(stats.errors) + len(state.errors)
        rows = [
            ("running", ", ".join(f"{v}: {n}" for v, n in sorted(running.items())),
             "backend", ", ".join(stats.backends) or "-"),
            ("events", f"{stats.events:,}", "latency p50", _ms(stats.percentile(50)) + " ms"),
            ("triggers fired", f"{stats.triggers_fired:,}", "latency p99", _ms(stats.percentile(99)) + " ms"),
            ("inferences (on server)", f"{stats.inferences:,} ({_server_inferences(state.server_results):,})",
             "shed (queue full)", str(stats.shed)),
            ("failed starts", ", ".join(f"{v}: {n}" for v, n in sorted(stats.health_checks_failed.items())) or "0",
             "errors", Text(str(errors), style="bold red" if errors else "green")),
        ]
        for row in rows:
            grid.add_row(*row)
    return Panel(grid, title=f"Fleet ({state.config.devices} simulated devices)", title_align="left")


def _server_inferences(results: dict[str, dict[str, Any]]) -> int:
    return sum(r["inferences"] for r in results.values())


def _server_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """One summary row per version, from the server's aggregate of the devices' reports."""
    rows = []
    for version, r in sorted(results.items()):
        latency = r["latency_ms"]
        # terse, so the table still fits an 80-column terminal
        text = (f"{r['inferences']:,} inf, {r['errors']} err, {r['devices']} dev, "
                f"{_ms(latency['p50'])} / {_ms(latency['p99'])} ms")
        rows.append((f"server got {version}", text))
    return rows or [("server got", "no results")]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def releases_table(summary: dict[str, Any]) -> Table:
    """The releases as the server saw them at the end."""
    table = Table(title="Releases", title_justify="left")
    for column in ("release", "version", "state", "per stage: installed / targeted (failed)"):
        table.add_column(column)
    for release in summary["releases"]:
        stages = "   ".join(f"{s['name']} {s['installed']}/{s['targeted']}" + (f" ({s['failed']})" if s["failed"] else "")
                           for s in release["stages"])
        table.add_row(str(release["release"]), release["version"],
                      Text(release["state"], style=STATE_STYLE.get(release["state"], "")), stages)
    return table


def summary_table(summary: dict[str, Any], ok: bool) -> Table:
    """The closing table: every acceptance figure, and whether the demo passed. The
    ``server got`` rows are what the server aggregated from the devices' results reports:
    inferences, errors, devices reporting, p50 (median of devices) / p99 (worst device)."""
    table = Table(title="walle demo: summary", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    latency = summary["latency_ms"]
    rows = [
        ("devices updated", f"{summary['updated']} / {summary['devices']}"),
        ("behaviour events", f"{summary['events']:,}"),
        ("triggers fired", f"{summary['triggers_fired']:,}"),
        ("inferences", f"{summary['inferences']:,}  "
                       + ", ".join(f"{v}: {n}" for v, n in sorted(summary["inferences_by_version"].items()))),
        ("latency p50 / p99", f"{_ms(latency['p50'])} / {_ms(latency['p99'])} ms"),
        ("backend", str(summary["backend"])),
        *_server_rows(summary["server_results"]),
        ("offers made", str(summary["offers"])),
        ("firings shed (queue full)", str(summary["shed"])),
        ("abort + rollback observed", "yes" if summary["abort_rollback_observed"] else "no"),
        ("errors", str(len(summary["errors"]))),
        ("wall time", f"{summary['wall_s']:.1f} s"),
        ("result", "OK" if ok else "FAILED"),
    ]
    for what, value in rows:
        table.add_row(what, Text(value, style="bold green" if value == "OK" else "bold red" if value == "FAILED"
                                 else ""))
    return table


class LiveView:
    """A rich ``Live`` display refreshed by the scenario; a no-op when not on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    def __enter__(self) -> LiveView:  # noqa: PYI034 (typing.Self needs 3.11)
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def refresh(self, state: DemoState) -> None:
        if self._live is not None:
            self._live.update(render(state))
