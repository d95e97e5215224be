"""task.toml validation and task loading: every rejected directory names its file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from walle_core.container import TaskError, load_task, parse_task_dir
from walle_core.errors import WalleError

GOOD_TOML = """
name = "demo"
version = "1.2.0"
entry = "main.py"
models = ["net.onnx"]
[trigger]
stream = "camera"
every = 3
[limits]
timeout_s = 2
memory_mb = 64.5
[isolation]
mode = "thread"
[config]
threshold = 0.5
labels = ["a", "b"]
"""

RUN = "def run(ctx, inputs):\n    return {}\n"


def tiny_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_task(root: Path, toml: str, files: dict[str, str | bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "task.toml").write_text(textwrap.dedent(toml))
    for name, content in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return root


def good_files() -> dict[str, str | bytes]:
    return {"main.py": RUN, "net.onnx": tiny_model().SerializeToString()}


def test_valid_task_parses_every_field(tmp_path: Path) -> None:
    spec = parse_task_dir(write_task(tmp_path / "t", GOOD_TOML, good_files()))
    assert (spec.name, spec.version, spec.mode) == ("demo", "1.2.0", "thread")
    assert spec.entry == (tmp_path / "t" / "main.py").resolve()
    assert spec.models == {"net": (tmp_path / "t" / "net.onnx").resolve()}
    assert (spec.limits.timeout_s, spec.limits.memory_mb) == (2.0, 64.5)
    assert spec.trigger == {"stream": "camera", "every": 3}
    assert spec.config == {"threshold": 0.5, "labels": ["a", "b"]}


def test_models_table_form_and_defaults(tmp_path: Path) -> None:
    toml = 'name = "t"\nversion = "1"\nentry = "main.py"\n[models]\nclassifier = "net.onnx"\n'
    spec = parse_task_dir(write_task(tmp_path / "t", toml, good_files()))
    assert list(spec.models) == ["classifier"]
    assert spec.mode == "thread" and spec.limits.timeout_s is None and spec.config == {}


def test_load_task_loads_models_and_run(tmp_path: Path) -> None:
    task = load_task(write_task(tmp_path / "t", GOOD_TOML, good_files()))
    try:
        x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
        np.testing.assert_array_equal(task.models["net"].run({"x": x})["y"], np.maximum(x, 0))
        assert task.run_function is not None and task.run_function(None, {}) == {}
    finally:
        task.close()


def _replace(old: str, new: str) -> str:
    assert old in GOOD_TOML
    return GOOD_TOML.replace(old, new)


# (what is wrong, task.toml text, extra/overriding files, expected field, expected words)
INVALID = [
    ("unknown top-level key", 'extra = 1\n' + GOOD_TOML, {}, "extra", "unknown key"),
    ("unknown limits key", _replace("timeout_s = 2", "timeout = 2"), {}, "limits.timeout", "unknown key"),
    ("unknown isolation key", _replace('mode = "thread"', 'mode = "thread"\ncpus = 2'), {},
     "isolation.cpus", "unknown key"),
    ("missing name", _replace('name = "demo"\n', ""), {}, "name", "missing"),
    ("name not a string", _replace('name = "demo"', "name = 5"), {}, "name", "non-empty string"),
    ("name with a slash", _replace('name = "demo"', 'name = "a/b"'), {}, "name", "must match"),
    ("version not a string", _replace('version = "1.2.0"', "version = 1.2"), {}, "version", "string"),
    ("missing entry key", _replace('entry = "main.py"\n', ""), {}, "entry", "missing"),
    ("entry file missing", _replace('entry = "main.py"', 'entry = "nope.py"'), {}, "entry", "does not exist"),
    ("entry not python", _replace('entry = "main.py"', 'entry = "net.onnx"'), {}, "entry", "not a .py"),
    ("entry outside dir", _replace('entry = "main.py"', 'entry = "../main.py"'), {}, "entry", "outside"),
    ("timeout as string", _replace("timeout_s = 2", 'timeout_s = "2"'), {}, "limits.timeout_s",
     "positive number"),
    ("timeout as bool", _replace("timeout_s = 2", "timeout_s = true"), {}, "limits.timeout_s",
     "positive number"),
    ("negative memory", _replace("memory_mb = 64.5", "memory_mb = -1"), {}, "limits.memory_mb",
     "positive number"),
    ("limits not a table", "limits = 3\n" + _replace("[limits]\ntimeout_s = 2\nmemory_mb = 64.5\n", ""), {},
     "limits", "table"),
    ("bad mode", _replace('mode = "thread"', 'mode = "fiber"'), {}, "isolation.mode", "one of"),
    ("model file missing", _replace('models = ["net.onnx"]', 'models = ["other.onnx"]'), {}, "models[0]",
     "does not exist"),
    ("model not a string", _replace('models = ["net.onnx"]', "models = [3]"), {}, "models[0]", "file name"),
    ("models wrong type", _replace('models = ["net.onnx"]', 'models = "net.onnx"'), {}, "models", "list"),
    ("model fails to load", GOOD_TOML, {"net.onnx": b"not an onnx file"}, "models[0]", "failed to load"),
]


@pytest.mark.parametrize(("toml", "files", "field", "words"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_manifest_names_file_and_field(tmp_path: Path, toml: str, files: dict, field: str,
                                               words: str) -> None:
    root = write_task(tmp_path / "t", toml, {**good_files(), **files})
    with pytest.raises(TaskError) as info:
        load_task(root)
    assert isinstance(info.value, WalleError)
    assert info.value.field == field
    assert info.value.path == str((root / "task.toml").resolve())
    assert words in str(info.value) and str(root.resolve() / "task.toml") in str(info.value)
    assert repr(field) in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    root = write_task(tmp_path / "t", 'name = "x\n', good_files())
    with pytest.raises(TaskError, match="invalid TOML") as info:
        load_task(root)
    assert info.value.path.endswith("task.toml") and info.value.field is None


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    with pytest.raises(TaskError, match="task.toml: missing"):
        load_task(tmp_path / "t")


@pytest.mark.parametrize(("source", "field", "words"), [
    ("def run(ctx, inputs):\n    return {\n", None, "does not compile"),
    ("raise RuntimeError('no camera')\n", None, "RuntimeError: no camera"),
    ("import not_a_module_anywhere\n", None, "not_a_module_anywhere"),
    ("RUN = 1\n", "run", "must define a function run"),
])
def test_broken_entry_names_the_entry_file(tmp_path: Path, source: str, field: str | None, words: str) -> None:
    root = write_task(tmp_path / "t", GOOD_TOML, {**good_files(), "main.py": source})
    with pytest.raises(TaskError) as info:
        load_task(root)
    assert info.value.path == str((root / "main.py").resolve())
    assert info.value.field == field
    assert words in str(info.value)


def test_process_mode_entry_is_compiled_not_run(tmp_path: Path) -> None:
    """Loading a process-mode task in the container must not execute its code."""
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').close()\n" + RUN
    toml = _replace('mode = "thread"', 'mode = "process"')
    task = load_task(write_task(tmp_path / "t", toml, {**good_files(), "main.py": source}))
    assert task.run_function is None and not marker.exists()
    broken = write_task(tmp_path / "u", toml, {**good_files(), "main.py": "def run(:\n"})
    with pytest.raises(TaskError, match="does not compile"):
        load_task(broken)
