"""``walle demo``: the whole device-cloud loop on one machine.

| module | job |
|---|---|
| ``task_template.py`` | the example task: a seeded ONNX "purchase intent" MLP, ``task.toml`` with a stream trigger and feature windows, the entry script |
| ``fleet.py`` | simulated devices: a ``DeviceAgent`` + a ``StreamEngine`` + one shared ``Container`` |
| ``scenario.py`` | the timeline: server, publish, staged releases v1 -> v2 -> broken v3 (abort + rollback), summary |
| ``view.py`` | the rich live view and the closing summary table |
| ``command.py`` | the click command registered as ``walle demo`` by :mod:`walle_deploy.plugin` |
"""

from walle_deploy.demo.command import demo_command

__all__ = ["demo_command"]
