"""Hand-off: firings submitted to the compute container run the task with its features."""

from __future__ import annotations

import pytest

from walle_core.container import Container
from walle_stream import EngineConfig, StreamEngine
from walle_stream.container import ContainerSink
from walle_stream.errors import StreamConfigError
from walle_stream.tasks import load_task, task_from_table

TASK = """
name = "cart"
version = "1"
entry = "main.py"

[trigger]
sequence = ["page_view:detail", "add_to_cart"]
within_ms = 1000
key = "user"

[trigger.features.views]
window = "count"
size = 10
agg = "count"
"""

ENTRY = """
def run(ctx, inputs):
    return {"views": inputs["views"], "sku": inputs["event"]["attrs"]["sku"]}
"""


def test_fired_tasks_run_in_the_container_with_their_features(tmp_path):
    (tmp_path / "cart").mkdir()
    (tmp_path / "cart" / "task.toml").write_text(TASK)
    (tmp_path / "cart" / "main.py").write_text(ENTRY)
    task = load_task(tmp_path / "cart")
    box = Container(workers=1, state_dir=tmp_path / "state")
    try:
        sink = ContainerSink(box, [task])
        engine = StreamEngine([task], EngineConfig(), sinks=[sink])
        engine.push({"type": "page_view", "ts": 1, "key": "u", "page": "detail"})
        engine.push({"type": "page_view", "ts": 2, "key": "u", "page": "list"})
        engine.push({"type": "add_to_cart", "ts": 3, "key": "u", "attrs": {"sku": "p7"}})
        assert sink.collect(timeout=30) == {"cart": {"ok": 1}}
        assert sink.results == [("cart", "u", {"views": 3, "sku": "p7"})]
    finally:
        box.close()


def test_tasks_without_a_directory_cannot_be_submitted():
    task = task_from_table("inline", {"sequence": ["a"], "within_ms": 5})
    with pytest.raises(StreamConfigError, match="no directory"):
        ContainerSink(object(), [task])
