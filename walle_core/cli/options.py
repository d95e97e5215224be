"""Options shared by the model commands, and opening a session from them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from walle_core.session import Session


def backend_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--backend", "-b", default="auto", show_default=True,
        help="'auto', a backend name, or a comma-separated list in preference order.",
    )(f)


def threads_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--threads", "-t", type=click.IntRange(min=1), default=1, show_default=True)(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")(f)


def parse_backend(value: str) -> str | list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("no backend named", param_hint="--backend")
    return names[0] if len(names) == 1 else names


def open_session(model: str, backend: str, threads: int) -> tuple[Session, float]:
    """Load ``model``; returns the session and the load time in milliseconds.

    A missing file is reported here rather than by click, so that every model problem
    (missing, malformed, unsupported) gets the same one-line error and exit code 1.
    """
    import walle_core as wc

    if not os.path.isfile(model):
        raise wc.ModelError(f"model file not found: {model}")
    start = time.perf_counter()
    session = wc.load(model, backend=parse_backend(backend), threads=threads)
    return session, (time.perf_counter() - start) * 1e3
