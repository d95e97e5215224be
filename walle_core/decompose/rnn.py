"""RNN, GRU and LSTM, unrolled over their (static) sequence length.

The input projection of every time step is one MATMUL over the whole sequence; each step then
adds the recurrent projection (one MATMUL of the state) and applies the gate equations with
elementwise atoms. ``sequence_lens`` (value-specialised when fed as an input) freezes the state
of finished sequences and zeroes their outputs, as ONNX specifies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from walle_core.decompose import raster
from walle_core.decompose.context import LoweringContext, Rule
from walle_core.decompose.elementwise import binary, select, unary
from walle_core.decompose.raster import numpy_shape
from walle_core.ops import BinaryFn, MatMulAttrs, Op, UnaryFn

Activation = Callable[[str], str]

#: activation name -> (unary fn, default alpha, default beta); the rest are built below
_SIMPLE = {"relu": (UnaryFn.RELU, 0.0, 0.0), "tanh": (UnaryFn.TANH, 0.0, 0.0),
           "sigmoid": (UnaryFn.SIGMOID, 0.0, 0.0), "leakyrelu": (UnaryFn.LEAKY_RELU, 0.01, 0.0),
           "hardsigmoid": (UnaryFn.HARD_SIGMOID, 0.2, 0.5), "elu": (UnaryFn.ELU, 1.0, 0.0),
           "softplus": (UnaryFn.SOFTPLUS, 0.0, 0.0)}


def _activation(ctx: LoweringContext, name: str, alpha: float | None, beta: float | None) -> Activation:
    key = name.lower()
    if key in _SIMPLE:
        fn, a, b = _SIMPLE[key]
        return lambda x: unary(ctx, x, fn, a if alpha is None else alpha, b if beta is None else beta)
    if key == "affine":
        return lambda x: binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, x, ctx.scalar(alpha or 1.0, x)),
                                ctx.scalar(beta or 0.0, x))
    if key == "scaledtanh":
        return lambda x: binary(ctx, BinaryFn.MUL, unary(ctx, binary(
            ctx, BinaryFn.MUL, x, ctx.scalar(1.0 if beta is None else beta, x)), UnaryFn.TANH),
            ctx.scalar(1.0 if alpha is None else alpha, x))
    if key == "thresholdedrelu":
        cut = 1.0 if alpha is None else alpha
        return lambda x: select(ctx, binary(ctx, BinaryFn.GT, x, ctx.scalar(cut, x)), x, ctx.scalar(0, x))
    if key == "softsign":
        return lambda x: binary(ctx, BinaryFn.DIV, x, binary(ctx, BinaryFn.ADD, unary(ctx, x, UnaryFn.ABS),
                                                             ctx.scalar(1.0, x)))
    raise ctx.unsupported(f"activation {name!r}")


class _Cell:
    """What the three ops share: inputs split per direction, activations, clipping, masks."""

    def __init__(self, ctx: LoweringContext, node: onnx.NodeProto, gates: int, defaults: list[str]) -> None:
        self.ctx, self.node = ctx, node
        self.layout = int(ctx.attr(node, "layout", 0))
        x = ctx.required_input(node, 0)
        self.x = raster.transpose(ctx, x, [1, 0, 2]) if self.layout else x  # [seq, batch, in]
        self.steps, self.batch, _ = ctx.shape(self.x)
        self.w, self.r = ctx.required_input(node, 1), ctx.required_input(node, 2)
        self.dirs = ctx.shape(self.w)[0]
        direction = ctx.attr(node, "direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional") or \
                self.dirs != (2 if direction == "bidirectional" else 1):
            raise ctx.invalid(f"direction={direction!r} does not match W of shape {ctx.shape(self.w)}")
        self.reverse = [False, True] if self.dirs == 2 else [direction == "reverse"]
        self.hidden = int(ctx.attr(node, "hidden_size", ctx.shape(self.r)[-1]))
        if ctx.shape(self.w)[1] != gates * self.hidden or ctx.shape(self.r)[1:] != (gates * self.hidden, self.hidden):
            raise ctx.invalid(f"W {ctx.shape(self.w)} / R {ctx.shape(self.r)} do not match hidden_size={self.hidden}")
        self.gates = gates
        self.clip = ctx.attr(node, "clip")
        names = [a for a in (ctx.attr(node, "activations") or [])] or defaults * self.dirs
        if len(names) != len(defaults) * self.dirs:
            raise ctx.invalid(f"activations {names} must name {len(defaults)} functions per direction")
        alphas = list(ctx.attr(node, "activation_alpha") or [])
        betas = list(ctx.attr(node, "activation_beta") or [])
        self.acts = [_activation(ctx, name, alphas[i] if i < len(alphas) else None,
                                 betas[i] if i < len(betas) else None) for i, name in enumerate(names)]
        lens = ctx.const_input(node, 4, "sequence_lens")
        self.lens = None if lens is None else numpy_shape(lens)
        if self.lens is not None and (len(self.lens) != self.batch or any(
                not 0 <= n <= self.steps for n in self.lens)):
            raise ctx.invalid(f"sequence_lens {self.lens} do not match batch {self.batch} / {self.steps} steps")
        if self.lens is not None and all(n == self.steps for n in self.lens):
            self.lens = None

    def per_dir(self, name: str, d: int) -> str:
        """Slice direction ``d`` of a [dirs, ...] tensor and drop that axis."""
        return raster.squeeze(self.ctx, raster.slice_axes(self.ctx, name, [d], [d + 1], [0]), [0])

    def initial(self, i: int, d: int) -> str:
        ctx = self.ctx
        name = ctx.input(self.node, i)
        if not name:
            return ctx.constant(np.zeros((self.batch, self.hidden), dtype=ctx.dtype(self.x)))
        if self.layout:
            name = raster.transpose(ctx, name, [1, 0, 2])
        return self.per_dir(name, d)

    def gate(self, t: str, g: int) -> str:
        return raster.slice_axes(self.ctx, t, [g * self.hidden], [(g + 1) * self.hidden], [-1])

    def clipped(self, t: str) -> str:
        return t if self.clip is None else unary(self.ctx, t, UnaryFn.CLIP, -self.clip, self.clip)

    def projections(self, d: int) -> tuple[list[str], str, str | None]:
        """Per time step X_t W^T + Wb ([batch, gates*hidden]), R^T, and Rb (or None)."""
        ctx = self.ctx
        w, r = self.per_dir(self.w, d), self.per_dir(self.r, d)
        xw = ctx.emit1(Op.MATMUL, [self.x, w], MatMulAttrs(trans_b=True))
        rb = None
        b = ctx.input(self.node, 3)
        if b:
            bias = self.per_dir(b, d)
            size = self.gates * self.hidden
            xw = binary(ctx, BinaryFn.ADD, xw, raster.slice_axes(ctx, bias, [0], [size]))
            rb = raster.slice_axes(ctx, bias, [size], [2 * size])
        steps = [raster.squeeze(ctx, raster.slice_axes(ctx, xw, [t], [t + 1], [0]), [0])
                 for t in range(self.steps)]
        rt = raster.transpose(ctx, r, [1, 0])
        return steps, rt, rb

    def alive(self, t: int) -> str | None:
        """[batch, 1] bool: which sequences still run at step ``t`` (None when all do)."""
        if self.lens is None:
            return None
        return self.ctx.constant(np.array([[t < n] for n in self.lens]))

    def run(self, step: Callable[[int, str, list[str]], list[str]], states: list[list[str]]) -> list[str]:
        """Unroll ``step(d, x_proj_t, state) -> new state`` and assemble Y and the final states."""
        ctx = self.ctx
        ys, finals = [], []
        for d in range(self.dirs):
            xs, state = self.xs[d], states[d]
            outs: list[str] = [""] * self.steps
            order = range(self.steps - 1, -1, -1) if self.reverse[d] else range(self.steps)
            for t in order:
                new = step(d, xs[t], state)
                keep = self.alive(t)
                if keep is not None:
                    new = [select(ctx, keep, n, s) for n, s in zip(new, state)]
                    outs[t] = select(ctx, keep, new[0], ctx.scalar(0, new[0]))
                else:
                    outs[t] = new[0]
                state = new
            ys.append(raster.concat(ctx, [raster.unsqueeze(ctx, o, [0]) for o in outs], 0))
            finals.append(state)
        y = raster.concat(ctx, [raster.unsqueeze(ctx, v, [1]) for v in ys], 1)  # [seq, dirs, batch, h]
        results = [raster.transpose(ctx, y, [2, 0, 1, 3]) if self.layout else y]
        for i in range(len(finals[0])):
            s = raster.concat(ctx, [raster.unsqueeze(ctx, f[i], [0]) for f in finals], 0)  # [dirs, batch, h]
            results.append(raster.transpose(ctx, s, [1, 0, 2]) if self.layout else s)
        return results

    def prepare(self) -> list[tuple[str, str | None]]:
        self.xs, recurrent = [], []
        for d in range(self.dirs):
            xs, rt, rb = self.projections(d)
            self.xs.append(xs)
            recurrent.append((rt, rb))
        return recurrent


def _mm(ctx: LoweringContext, h: str, rt: str, rb: str | None) -> str:
    y = ctx.emit1(Op.MATMUL, [h, rt], MatMulAttrs())
    return y if rb is None else binary(ctx, BinaryFn.ADD, y, rb)


def _rnn(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    cell = _Cell(ctx, node, 1, ["Tanh"])
    rec = cell.prepare()

    def step(d: int, xt: str, state: list[str]) -> list[str]:
        rt, rb = rec[d]
        return [cell.acts[d](cell.clipped(binary(ctx, BinaryFn.ADD, xt, _mm(ctx, state[0], rt, rb))))]

    return cell.run(step, [[cell.initial(5, d)] for d in range(cell.dirs)])


def _gru(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    cell = _Cell(ctx, node, 3, ["Sigmoid", "Tanh"])
    rec = cell.prepare()
    before_reset = bool(ctx.attr(node, "linear_before_reset", 0))
    h = cell.hidden

    def step(d: int, xt: str, state: list[str]) -> list[str]:
        rt, rb = rec[d]
        f, g = cell.acts[2 * d], cell.acts[2 * d + 1]
        prev = state[0]
        zr = _mm(ctx, prev, raster.slice_axes(ctx, rt, [0], [2 * h], [1]),
                 None if rb is None else raster.slice_axes(ctx, rb, [0], [2 * h]))
        z = f(cell.clipped(binary(ctx, BinaryFn.ADD, cell.gate(xt, 0), cell.gate(zr, 0))))
        r = f(cell.clipped(binary(ctx, BinaryFn.ADD, cell.gate(xt, 1), cell.gate(zr, 1))))
        rh = raster.slice_axes(ctx, rt, [2 * h], [3 * h], [1])
        rbh = None if rb is None else raster.slice_axes(ctx, rb, [2 * h], [3 * h])
        if before_reset:
            hidden = binary(ctx, BinaryFn.MUL, r, _mm(ctx, prev, rh, rbh))
        else:
            hidden = _mm(ctx, binary(ctx, BinaryFn.MUL, r, prev), rh, rbh)
        cand = g(cell.clipped(binary(ctx, BinaryFn.ADD, cell.gate(xt, 2), hidden)))
        one_minus_z = binary(ctx, BinaryFn.SUB, ctx.scalar(1.0, z), z)
        return [binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, one_minus_z, cand),
                       binary(ctx, BinaryFn.MUL, z, prev))]

    return cell.run(step, [[cell.initial(5, d)] for d in range(cell.dirs)])


def _lstm(ctx: LoweringContext, node: onnx.NodeProto) -> list[str]:
    cell = _Cell(ctx, node, 4, ["Sigmoid", "Tanh", "Tanh"])
    rec = cell.prepare()
    if ctx.attr(node, "input_forget", 0):
        raise ctx.unsupported("input_forget=1")
    peep = ctx.input(node, 7)
    h = cell.hidden

    def peephole(d: int, k: int) -> str | None:
        if not peep:
            return None
        return raster.slice_axes(ctx, cell.per_dir(peep, d), [k * h], [(k + 1) * h])

    def step(d: int, xt: str, state: list[str]) -> list[str]:
        rt, rb = rec[d]
        f, g, act_h = cell.acts[3 * d: 3 * d + 3]
        prev_h, prev_c = state
        pre = binary(ctx, BinaryFn.ADD, xt, _mm(ctx, prev_h, rt, rb))  # gates i, o, f, c

        def with_peephole(t: str, k: int, c: str) -> str:
            p = peephole(d, k)
            return t if p is None else binary(ctx, BinaryFn.ADD, t, binary(ctx, BinaryFn.MUL, p, c))

        i = f(cell.clipped(with_peephole(cell.gate(pre, 0), 0, prev_c)))
        fg = f(cell.clipped(with_peephole(cell.gate(pre, 2), 2, prev_c)))
        cand = g(cell.clipped(cell.gate(pre, 3)))
        c = binary(ctx, BinaryFn.ADD, binary(ctx, BinaryFn.MUL, fg, prev_c), binary(ctx, BinaryFn.MUL, i, cand))
        o = f(cell.clipped(with_peephole(cell.gate(pre, 1), 1, c)))
        return [binary(ctx, BinaryFn.MUL, o, act_h(c)), c]

    states = [[cell.initial(5, d), cell.initial(6, d)] for d in range(cell.dirs)]
    return cell.run(step, states)


RULES: dict[str, Rule] = {"RNN": _rnn, "GRU": _gru, "LSTM": _lstm}
