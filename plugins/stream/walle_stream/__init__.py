"""Walle's stream plugin: user-behaviour events in, task firings with features out.

Every registered trigger is compiled into one shared automaton (:class:`NativeAutomaton` in
C++ when it can run the triggers, else the Python :class:`TriggerAutomaton`),
windowed features are kept per key (:class:`FeatureStore`), and :class:`StreamEngine`
ties them together with validation, watermarks and durable SQLite state.
"""

from walle_stream.automaton import TriggerAutomaton
from walle_stream.engine import EngineConfig, Fire, StreamEngine
from walle_stream.events import Event, EventValidator, RejectedEvent
from walle_stream.native import NativeAutomaton, native_available
from walle_stream.pattern import Element, Pattern, Trigger
from walle_stream.sinks import CallbackSink, FireSink, ListSink
from walle_stream.tasks import StreamTask, load_task, load_tasks
from walle_stream.windows import FeatureSpec, FeatureStore

__all__ = [
    "CallbackSink",
    "Element",
    "EngineConfig",
    "Event",
    "EventValidator",
    "FeatureSpec",
    "FeatureStore",
    "Fire",
    "FireSink",
    "ListSink",
    "NativeAutomaton",
    "Pattern",
    "RejectedEvent",
    "StreamEngine",
    "StreamTask",
    "Trigger",
    "TriggerAutomaton",
    "load_task",
    "load_tasks",
    "native_available",
]
