"""Load-time benchmark of the compiled format: ``python -m walle_core.compiled_bench MODEL.onnx``.

Converts MODEL once (symbolic dimensions become 1), then times, best of ``--repeat``:
opening the ``.walle`` file alone (header, validation, mapping), a full walle session on the
``.walle`` file and on the ONNX file (both include scheduling and backend compilation), and
ONNX Runtime session creation. ONNX Runtime is only needed to run this script.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def best_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` calls, in ms: the least disturbed by the machine's other work."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def measure(model: str, repeat: int = 3, backend: str = "auto") -> list[tuple[str, float]]:
    """(what, milliseconds) rows for ``model``."""
    import onnxruntime as ort

    import walle_core as wc
    from walle_core.compiled import CompiledModel, convert
    from walle_core.onnx import load_model

    shapes = {spec.name: tuple(d if isinstance(d, int) else 1 for d in spec.shape)
              for spec in load_model(model).inputs}
    with tempfile.TemporaryDirectory() as tmp:
        compiled = str(Path(tmp) / (Path(model).stem + ".walle"))
        convert(model, compiled, shapes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return [
            (".walle open (map + validate)", best_ms(lambda: CompiledModel(compiled), repeat)),
            (".walle session (walle_core.load)", best_ms(lambda: wc.load(compiled, backend=backend), repeat)),
            ("ONNX Runtime InferenceSession", best_ms(
                lambda: ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]), repeat)),
            ("walle_core.load(.onnx)", best_ms(lambda: wc.load(model, backend=backend), repeat)),
        ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    for model in args.models:
        rows = measure(model, args.repeat, args.backend)
        reference = rows[1][1]
        print(f"\n{Path(model).name}  (best of {args.repeat}; ratio = time / .walle session)")
        print(f"  {'load path':36s} {'ms':>10s} {'ratio':>8s}")
        for what, ms in rows:
            print(f"  {what:36s} {ms:10.1f} {ms / reference:8.2f}x")


if __name__ == "__main__":
    main()
