"""Semi-auto choice of each convolution's algorithm: im2col/1x1 GEMM, for stride-2 windows also
a GEMM with the pixels as rows that reads its taps straight from the image, Winograd F(2,3),
F(4,3) or F(6,3), or the direct depthwise kernel.

Every candidate's time is estimated from the shape with a cost model whose rates (GEMM
multiply-adds, Winograd transform work and im2col traffic per second) are fitted to a few
micro-benchmarks on this CPU, once per (CPU model, ISA, threads) and kept on disk. With
``WALLE_CONV_SEARCH=measure`` each candidate is also timed once on the op's real shape and
the fastest wins; those decisions are kept on disk per (CPU model, ISA, threads, shape), so a
second load decides instantly. ``WALLE_CONV_SEARCH=rule`` skips the calibration and uses
built-in rates (the ratio of the old fixed rule).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from walle_core import ops
from walle_core.caches import JsonFileCache
from walle_core.errors import BackendError
from walle_core.ir import Node, TensorType

#: how convolutions are chosen: "model" (default), "measure" or "rule"
SEARCH_ENV = "WALLE_CONV_SEARCH"
#: forces one Winograd policy for every 3x3 convolution: 0 (never), 2, 4 or 6
WINOGRAD_ENV = "WALLE_CPU_X86_WINOGRAD"

GEMM, DEPTHWISE = "gemm", "depthwise"
#: stride-2 windows: the GEMM with the output pixels as its rows, reading each row's taps from the
#: phase-split image (no im2col matrix), the weights as its packed B
GEMM_ROWS = "gemm, pixels as rows"
WINOGRAD2, WINOGRAD4, WINOGRAD6 = "winograd F(2,3)", "winograd F(4,3)", "winograd F(6,3)"
_TILE = {WINOGRAD2: 2, WINOGRAD4: 4, WINOGRAD6: 6}
#: the int the native conv takes for each algorithm (ints[12]: a Winograd tile, 0 a GEMM, 1 a
#: GEMM with the pixels as rows)
POLICY = {GEMM: 0, GEMM_ROWS: 1, DEPTHWISE: 0, **_TILE}
#: the native side refuses more Winograd workspace than this (conv.cpp, kMaxWinogradWorkspace)
MAX_WINOGRAD_WORKSPACE = 64 << 20
# 2: best of CALIBRATION_ROUNDS rounds; 3: family/model/stepping in the key; 4: F(6,3); 5: GEMM_ROWS
_RATES_VERSION = 5


@dataclass(frozen=True)
class ConvShape:
    """What the algorithms' costs depend on (batch 1 per image; costs scale with n)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    oh: int
    ow: int
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    groups: int

    @classmethod
    def of(cls, node: Node, types: Mapping[str, TensorType]) -> ConvShape:
        a: ops.Conv2DAttrs = node.attrs
        n, c, h, w = types[node.inputs[0]].shape
        o, _, kh, kw = types[node.inputs[1]].shape
        _, _, oh, ow = types[node.outputs[0]].shape
        return cls(int(n), int(c), int(h), int(w), int(o), int(kh), int(kw), int(oh), int(ow),
                   tuple(a.strides), tuple(a.dilations), tuple(a.pads), int(a.groups))

    @property
    def depthwise(self) -> bool:
        """One input channel per group, as the native depthwise kernel takes it."""
        return self.groups == self.c

    @property
    def winograd_ok(self) -> bool:
        return (self.kh, self.kw, self.strides, self.dilations, self.groups) == (3, 3, (1, 1), (1, 1), 1)

    @property
    def gathered_ok(self) -> bool:
        """A stride-2 window the GEMM with the pixels as rows reads from the phase-split image.
        Four input channels or fewer (network stems) read their taps from it in the usual
        orientation already."""
        return (self.groups == 1 and self.strides == (2, 2) and self.dilations == (1, 1) and self.kh >= 2
                and self.kw >= 2 and self.c > 4)

    @property
    def direct_1x1(self) -> bool:
        return (self.kh, self.kw, self.strides) == (1, 1, (1, 1)) and not any(self.pads)

    @property
    def macs(self) -> int:
        return self.n * self.o * self.oh * self.ow * (self.c // self.groups) * self.kh * self.kw

    def key(self) -> str:
        return (f"{self.n}x{self.c}x{self.h}x{self.w}->{self.o}x{self.oh}x{self.ow}|k{self.kh}x{self.kw}"
                f"|s{self.strides}|d{self.dilations}|p{self.pads}|g{self.groups}").replace(" ", "")


@dataclass(frozen=True)
class Rates:
    """Per second, on this CPU at this thread count: GEMM multiply-adds; Winograd transform
    multiply-adds (per tile size); im2col bytes written; depthwise multiply-adds; multiply-adds
    of the GEMM with the pixels as rows that reads its taps from the image; plus a fixed cost
    per op."""

    gemm_macs: float
    transform2_macs: float
    transform4_macs: float
    transform6_macs: float
    im2col_bytes: float
    depthwise_macs: float
    gathered_macs: float
    launch_s: float


def builtin_rates() -> Rates:
    """Round figures for a 2020s x86 core, with the transforms costed at four GEMM
    multiply-adds each as the fixed rule did, and the taps read from the image at 0.8 of the
    GEMM's rate (ResNet's stride-2 layers then keep the usual orientation, as the fixed rule
    did): used until a calibration exists."""
    gemm = 40e9
    return Rates(gemm, gemm / 4, gemm / 4, gemm / 4, 8e9, 4e9, gemm * 0.8, 5e-6)


def candidates(shape: ConvShape, nr: int) -> list[str]:
    if shape.depthwise:
        return [DEPTHWISE]
    found = [GEMM]
    if shape.gathered_ok:
        found.append(GEMM_ROWS)
    if shape.winograd_ok and shape.c >= 8 and shape.o >= 8:
        found += [a for a, m in _TILE.items() if winograd_workspace_bytes(shape, m, nr) <= MAX_WINOGRAD_WORKSPACE]
    return found


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tiles(shape: ConvShape, m: int) -> int:
    return _ceil(shape.oh, m) * _ceil(shape.ow, m)


def winograd_workspace_bytes(shape: ConvShape, m: int, nr: int) -> int:
    """The shared workspace a Winograd F(m,3) convolution of ``shape`` takes on GEMM column
    panels of ``nr``, as the native kernel sizes it."""
    from walle_cpu_x86 import _ext  # the native module; only needed once a convolution is costed

    return int(_ext.winograd_workspace_bytes(m, shape.c, shape.h, shape.w, shape.o, shape.oh, shape.ow, nr))


def work(shape: ConvShape, algorithm: str, nr: int) -> dict[str, float]:
    """The work each rate is charged with, per algorithm (see :class:`Rates`)."""
    if algorithm == DEPTHWISE:
        return {"depthwise_macs": shape.macs}
    if algorithm == GEMM:
        im2col = 0 if shape.direct_1x1 else shape.n * shape.c * shape.kh * shape.kw * shape.oh * shape.ow * 4
        return {"gemm_macs": shape.macs, "im2col_bytes": im2col}
    if algorithm == GEMM_ROWS:
        return {"gathered_macs": shape.macs}
    m = _TILE[algorithm]
    t, tiles = m + 2, _tiles(shape, m)
    gemm = shape.n * t * t * shape.c * shape.o * _ceil(tiles, nr) * nr
    transforms = shape.n * tiles * (shape.c * 2 * t * t * t + shape.o * (m * t * t + m * m * t))
    return {"gemm_macs": gemm, f"transform{m}_macs": transforms}


def predict(shape: ConvShape, algorithm: str, rates: Rates, nr: int) -> float:
    """Estimated seconds for one execution."""
    return rates.launch_s + sum(amount / getattr(rates, rate) for rate, amount in work(shape, algorithm, nr).items())


def cpu_model() -> str:
    """The CPU's model, which keys everything measured on it: its name plus family, model and
    stepping (virtual machines often report a bare vendor name such as "AMD EPYC")."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    ids = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{fields['model name']} ({ids})"


#: a single-conv timing: (shape, algorithm) -> best seconds of a few runs
Timer = Callable[[ConvShape, str], float]

# Calibration convolutions: each isolates one rate given the ones before it.
_CALIBRATION = {
    "gemm": ConvShape(1, 256, 28, 28, 256, 1, 1, 28, 28, (1, 1), (1, 1), (0, 0, 0, 0), 1),
    "im2col": ConvShape(1, 64, 28, 28, 64, 3, 3, 28, 28, (1, 1), (1, 1), (1, 1, 1, 1), 1),
    "depthwise": ConvShape(1, 128, 56, 56, 128, 3, 3, 56, 56, (1, 1), (1, 1), (1, 1, 1, 1), 128),
    "gathered": ConvShape(1, 128, 56, 56, 128, 3, 3, 28, 28, (2, 2), (1, 1), (1, 1, 1, 1), 1),
}


#: rounds over all calibration timings; each timing keeps its best round (noise only adds time,
#: and a burst of other load then spoils one round of one timing rather than a fitted rate)
CALIBRATION_ROUNDS = 3


def calibrate(timer: Timer, nr: int) -> Rates:
    """Fit the rates to timings of a few convolutions, one unknown at a time."""
    gemm_conv, im2col_conv, dw_conv = _CALIBRATION["gemm"], _CALIBRATION["im2col"], _CALIBRATION["depthwise"]
    gathered_conv = _CALIBRATION["gathered"]
    runs = [(gemm_conv, GEMM), (im2col_conv, GEMM), *((im2col_conv, a) for a in _TILE), (dw_conv, DEPTHWISE),
            (gathered_conv, GEMM_ROWS)]
    best = {run: float("inf") for run in runs}
    for _ in range(CALIBRATION_ROUNDS):
        for run in runs:
            best[run] = min(best[run], timer(*run))
    launch = 5e-6
    gemm_rate = gemm_conv.macs / max(best[gemm_conv, GEMM] - launch, 1e-7)

    def residual_rate(shape: ConvShape, algorithm: str, rate: str) -> float:
        jobs = work(shape, algorithm, nr)
        rest = best[shape, algorithm] - launch - jobs["gemm_macs"] / gemm_rate
        # a negative remainder means the unknown part is lost in the noise: call it cheap
        return jobs[rate] / max(rest, jobs["gemm_macs"] / gemm_rate * 0.02)

    return Rates(
        gemm_macs=gemm_rate,
        transform2_macs=residual_rate(im2col_conv, WINOGRAD2, "transform2_macs"),
        transform4_macs=residual_rate(im2col_conv, WINOGRAD4, "transform4_macs"),
        transform6_macs=residual_rate(im2col_conv, WINOGRAD6, "transform6_macs"),
        im2col_bytes=residual_rate(im2col_conv, GEMM, "im2col_bytes"),
        depthwise_macs=dw_conv.macs / max(best[dw_conv, DEPTHWISE] - launch, 1e-7),
        gathered_macs=gathered_conv.macs / max(best[gathered_conv, GEMM_ROWS] - launch, 1e-7),
        launch_s=launch,
    )


@dataclass(frozen=True)
class Choice:
    algorithm: str
    predicted_s: float
    measured_s: float | None = None  # when the choice was confirmed by timing


class ConvChooser:
    """Picks and remembers one algorithm per convolution shape for one backend instance."""

    def __init__(self, device_key: str, nr: int, timer: Timer, mode: str | None = None) -> None:
        self.mode = (mode or os.environ.get(SEARCH_ENV, "model")).strip().lower()
        if self.mode not in ("model", "measure", "rule"):
            raise BackendError(f"[cpu_x86] {SEARCH_ENV}={self.mode!r}: expected model, measure or rule")
        self.device_key = f"v{_RATES_VERSION}|{cpu_model()}|{device_key}"
        self.nr = nr
        self._timer = timer
        self._rates: Rates | None = None
        self._choices: dict[ConvShape, Choice] = {}
        self._rate_cache = JsonFileCache("cpu_x86_rates.json")
        self._choice_cache = JsonFileCache("cpu_x86_conv.json")

    @property
    def rates(self) -> Rates:
        if self._rates is None:
            self._rates = builtin_rates() if self.mode == "rule" else self._cached_rates()
        return self._rates

    def _cached_rates(self) -> Rates:
        entry = self._rate_cache.get_entry(self.device_key)
        if _valid_rates(entry):
            return Rates(**entry)  # anything else (another version, a damaged file): measure again
        rates = calibrate(self._timer, self.nr)
        _store(self._rate_cache, self.device_key, asdict(rates))
        return rates

    def choose(self, shape: ConvShape) -> Choice:
        known = self._choices.get(shape)
        if known is not None:
            return known
        options = candidates(shape, self.nr)
        predicted = {a: predict(shape, a, self.rates, self.nr) for a in options}
        cheapest = min(options, key=predicted.__getitem__)
        choice = Choice(cheapest, predicted[cheapest])
        if self.mode == "measure" and len(options) > 1:
            choice = self._measured(shape, options, predicted)
        self._choices[shape] = choice
        return choice

    def _measured(self, shape: ConvShape, options: list[str], predicted: dict[str, float]) -> Choice:
        key = f"{self.device_key}|{shape.key()}"
        entry = self._choice_cache.get_entry(key)
        if (isinstance(entry, dict) and entry.get("algorithm") in options
                and _positive_number(entry.get("measured_s"))):
            return Choice(entry["algorithm"], predicted[entry["algorithm"]], float(entry["measured_s"]))
        timings = {a: self._timer(shape, a) for a in options}
        best = min(options, key=timings.__getitem__)
        _store(self._choice_cache, key, {"algorithm": best, "measured_s": timings[best],
                                         "timings": {a: round(t, 9) for a, t in timings.items()}})
        return Choice(best, predicted[best], timings[best])


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _valid_rates(entry: object) -> bool:
    """A stored calibration with exactly the fields of :class:`Rates`, all positive numbers."""
    return (isinstance(entry, dict) and set(entry) == set(Rates.__dataclass_fields__)
            and all(_positive_number(v) for v in entry.values()))


def _store(cache: JsonFileCache, key: str, value: dict) -> None:
    """Keep a result on disk if the cache directory is writable; without it the result still
    holds for this backend instance."""
    try:
        cache.put_entry(key, value)
    except OSError:
        pass


def forced_policy() -> int | None:
    """The Winograd policy ``WALLE_CPU_X86_WINOGRAD`` forces on every 3x3 convolution, if set."""
    value = os.environ.get(WINOGRAD_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("0", "2", "4", "6"):
        raise BackendError(f"[cpu_x86] {WINOGRAD_ENV}={value!r}: expected auto, 0, 2, 4 or 6")
    return int(value)


def random_conv_inputs(shape: ConvShape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Input and weights for timing ``shape`` (values do not matter, only their sizes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(np.float32)
    w = rng.standard_normal((shape.o, shape.c // shape.groups, shape.kh, shape.kw)).astype(np.float32)
    return x, w


def best_time(run: Callable[[], object], repeat: int = 5, budget_s: float = 0.05) -> float:
    """Best wall time of up to ``repeat`` runs after one warm-up, within about ``budget_s``."""
    run()
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return best
