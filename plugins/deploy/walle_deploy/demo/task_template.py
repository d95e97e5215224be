"""The example task the demo deploys: a "purchase intent" model over behaviour features.

Everything is built locally with fixed seeds, so the demo needs no download and every
run deploys byte-identical bundles. A task directory holds

* ``intent.onnx``: a two-layer MLP (Gemm -> Relu -> Gemm -> Sigmoid) over the features
  below, its weights drawn from a seeded generator (the version's ``seed`` is its "training");
* ``task.toml``: the stream trigger (a product page view followed by add-to-cart within
  30 s, per user) and the feature windows the stream plugin computes when it fires;
* ``main.py``: pre-processing (features -> normalised vector), the model run in the compute
  container, post-processing (probability -> offer decision).

A ``broken`` version has an entry whose ``run`` raises: it installs and verifies cleanly
but fails its start-up health check, which is how the demo shows abort and rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK_NAME = "purchase-intent"
MODEL_FILE = "intent.onnx"
HIDDEN = 16
#: the model's inputs, in order; each is one ``[trigger.features.<name>]`` table below
FEATURES = ("views_5m", "detail_views_5m", "carts_10m", "mean_price_5m", "skus_session")
#: the median of each feature when the trigger fires in a 20 s demo (measured over 30 synthetic
#: users of walle_stream.gen, 150 events each): normalised inputs are O(1) at a typical firing
FEATURE_SCALE = (58.0, 23.0, 6.0, 52.0, 18.0)

TASK_TOML = '''\
name = "{name}"
version = "{version}"
entry = "main.py"
models = ["{model}"]

[trigger]
sequence = ["page_view:detail", "add_to_cart"]
within_ms = 30000
contiguity = "relaxed"
key = "user"

[trigger.features.views_5m]
window = "sliding"
size_ms = 300000
slide_ms = 60000
agg = "count"
types = ["page_view"]

[trigger.features.detail_views_5m]
window = "sliding"
size_ms = 300000
slide_ms = 60000
agg = "count"
types = ["page_view"]
page = "detail"

[trigger.features.carts_10m]
window = "tumbling"
size_ms = 600000
agg = "count"
types = ["add_to_cart"]

[trigger.features.mean_price_5m]
window = "sliding"
size_ms = 300000
slide_ms = 60000
agg = "mean"
field = "attrs.price"
types = ["page_view"]
page = "detail"

[trigger.features.skus_session]
window = "session"
gap_ms = 60000
agg = "distinct"
field = "attrs.sku"

[limits]
timeout_s = 2.0

[config]
threshold = 0.5
features = {features}
scale = {scale}
'''

MAIN_PY = '''\
"""Purchase intent: features of the firing user -> probability -> offer decision."""

import numpy as np

_backend = None  # which backend(s) run the model; the plan is fixed per input shape


def preprocess(inputs, config):
    values = []
    for name, scale in zip(config["features"], config["scale"]):
        value = inputs.get(name)
        values.append(0.0 if value is None else float(value) / scale)
    return np.asarray([values], dtype=np.float32)


def run(ctx, inputs):
    global _backend
{failure}    features = preprocess(inputs, ctx.config)
    model = ctx.model("intent")
    probability = float(model.run({{"features": features}})["intent"][0, 0])
    if _backend is None:
        segments = model.session.plan_for({{"features": features}}).segments
        _backend = "+".join(sorted({{name for name, _ in segments}}))
    return {{"user": inputs["event"]["key"], "intent": probability,
            "offer": probability >= ctx.config["threshold"], "backend": _backend}}
'''

BROKEN = '    raise RuntimeError("this version is deliberately broken (demo of abort + rollback)")\n'


@dataclass(frozen=True)
class TaskVersion:
    """One release of the example task: its version string, the seed of its weights, and
    whether its entry is deliberately broken."""

    version: str
    seed: int
    broken: bool = False


def intent_model(seed: int) -> bytes:
    """The serialized ONNX MLP ``features[1, F] -> intent[1, 1]`` with weights from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f = len(FEATURES)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(f), (f, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, 1)).astype(np.float32)
    # centre the output on a typical firing (every normalised feature 1), so offers go to
    # roughly the more engaged half of the users rather than to almost none or all of them
    hidden = np.maximum(np.ones(f, dtype=np.float32) @ w1 + b1, 0.0)
    b2 = -(hidden @ w2).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["intent"]),
    ]
    graph = helper.make_graph(
        nodes, "purchase_intent",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, f])],
        [helper.make_tensor_value_info("intent", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(w, name) for w, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="walle-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_task(root: Path, spec: TaskVersion) -> Path:
    """Write the task directory for ``spec`` under ``root`` and return it."""
    task_dir = root / f"{TASK_NAME}-{spec.version}"
    task_dir.mkdir(parents=True)
    (task_dir / MODEL_FILE).write_bytes(intent_model(spec.seed))
    (task_dir / "task.toml").write_text(TASK_TOML.format(
        name=TASK_NAME, version=spec.version, model=MODEL_FILE,
        features="[" + ", ".join(f'"{name}"' for name in FEATURES) + "]",
        scale="[" + ", ".join(str(s) for s in FEATURE_SCALE) + "]"))
    (task_dir / "main.py").write_text(MAIN_PY.format(failure=BROKEN if spec.broken else ""))
    return task_dir


def health_check_inputs() -> dict[str, object]:
    """Inputs for the start-up health check: a plausible firing with every feature set."""
    event = {"type": "add_to_cart", "ts": 0, "key": "health-check", "page": "detail", "attrs": {}}
    return {**{name: scale for name, scale in zip(FEATURES, FEATURE_SCALE)}, "event": event}
