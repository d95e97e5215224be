"""The compute container: run many small ML tasks concurrently, each isolated from the others.

    from walle_core.container import Container
    with Container(workers=2) as box:
        handle = box.submit("tasks/classify", {"image": image})
        print(handle.result(timeout=5))

The task format and what isolation each mode guarantees are documented in docs/tasks.md.
"""

from walle_core.container.container import Container, default_state_dir
from walle_core.container.context import TaskContext
from walle_core.container.errors import (
    STATUSES,
    QueueFull,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskMemoryExceeded,
)
from walle_core.container.jobs import TaskHandle
from walle_core.container.spec import TaskSpec, parse_task_dir
from walle_core.container.task import Task, load_task

__all__ = [
    "STATUSES", "Container", "QueueFull", "Task", "TaskCancelled", "TaskContext", "TaskError", "TaskFailed",
    "TaskHandle", "TaskMemoryExceeded", "TaskSpec", "default_state_dir", "load_task", "parse_task_dir",
]
