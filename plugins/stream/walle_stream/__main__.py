"""``python -m walle_stream ...`` runs the ``walle stream`` commands without the core CLI
(handy when the plugin is not installed as an entry point, e.g. from a source tree)."""

from walle_core.cli import WalleGroup
from walle_core.cli.terminal import Terminal
from walle_stream.cli import stream_group

# the root group class, so errors print as one line just like under `walle stream`
main = WalleGroup("stream", commands=stream_group.commands, help=stream_group.help)

if __name__ == "__main__":
    main(obj=Terminal(), prog_name="python -m walle_stream")
