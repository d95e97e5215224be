"""The compiled-model cache: a second load of an ONNX file opens the graph the first one
lowered, gives bit-identical results, and never serves a graph for other model bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import walle_core as wc
from walle_core import model_cache
from walle_core.compiled import CompiledModel
from walle_core.errors import ModelError
from walle_core.testing.models import example_cnn

INPUT = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("WALLE_CACHE_DIR", str(root))
    monkeypatch.delenv(model_cache.SWITCH, raising=False)
    return root / "models"


def _static_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> global average at a fixed input shape, weights drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
             for name, shape in (("w1", (16, 3, 3, 3)), ("b1", (16,)), ("w2", (8, 16, 3, 3)), ("b2", (8,)))]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"])]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(INPUT.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path: Path) -> tuple[wc.Session, np.ndarray]:
    session = wc.load(path)
    return session, next(iter(session.run({"image": INPUT}).values()))


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.walle")) if cache.exists() else []


def test_second_load_opens_the_cached_graph(tmp_path, cache):
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    first, expected = _run(path)
    assert not isinstance(first.model, CompiledModel)
    (entry,) = _entries(cache)
    assert entry.stat().st_size < path.stat().st_size // 4  # the weights stay in the ONNX file

    second, got = _run(path)
    assert isinstance(second.model, CompiledModel)
    np.testing.assert_array_equal(got, expected)
    assert second.info() == first.info()
    reference = wc.load(onnx.load(path).SerializeToString())  # bytes: lowered, never cached
    np.testing.assert_allclose(got, next(iter(reference.run({"image": INPUT}).values())), rtol=1e-5)
    assert _entries(cache) == [entry]


def test_a_cached_load_imports_no_onnx(tmp_path, cache):
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _run(path)
    script = ("import sys, numpy as np, walle_core as wc\n"
              f"s = wc.load({str(path)!r})\n"
              "s.run({'image': np.zeros((2, 3, 32, 32), np.float32)})\n"
              "print(type(s.model).__name__, 'onnx' in sys.modules, 'importlib.metadata' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "WALLE_CACHE_DIR": str(cache.parent)})
    assert out.stdout.split() == ["CompiledModel", "False", "False"], out.stderr


@pytest.mark.parametrize("replace", [False, True], ids=["written-in-place", "renamed-over"])
def test_changed_weights_are_lowered_again(tmp_path, cache, replace):
    """The same path, the same size, other weights, within the file times' resolution."""
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(seed=0), path)
    _, old = _run(path)
    if replace:
        onnx.save(_static_cnn(seed=1), tmp_path / "new.onnx")
        os.replace(tmp_path / "new.onnx", path)
    else:
        onnx.save(_static_cnn(seed=1), path)
    session, new = _run(path)
    assert not isinstance(session.model, CompiledModel)
    expected = next(iter(wc.load(onnx.load(path).SerializeToString()).run({"image": INPUT}).values()))
    np.testing.assert_array_equal(new, expected)
    assert not np.allclose(new, old)


def test_a_rewrite_within_the_time_resolution_is_caught_by_the_crc(tmp_path, cache, monkeypatch):
    """Where file times are coarse, a rewrite right after the entry was written can leave
    every time as it was: stamps made of the size alone stand for that here."""
    monkeypatch.setattr(model_cache, "_stamp", lambda info: [info.st_size])
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(seed=0), path)
    _run(path)
    onnx.save(_static_cnn(seed=1), path)
    session, got = _run(path)
    assert not isinstance(session.model, CompiledModel)
    expected = next(iter(wc.load(onnx.load(path).SerializeToString()).run({"image": INPUT}).values()))
    np.testing.assert_array_equal(got, expected)


def test_an_entry_from_a_settled_file_is_checked_by_its_times(tmp_path, cache, monkeypatch):
    """A model older than the racy window gets no CRC; touching it still invalidates."""
    monkeypatch.setattr(model_cache, "_RACY_NS", 0)
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _run(path)
    (entry,) = _entries(cache)
    assert "crc32" not in CompiledModel(entry, source=path.read_bytes()).header["source_check"]
    assert isinstance(_run(path)[0].model, CompiledModel)
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - 10**9))
    assert not isinstance(_run(path)[0].model, CompiledModel)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign-offset"])
def test_a_damaged_entry_is_rebuilt(tmp_path, cache, damage):
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _, expected = _run(path)
    (entry,) = _entries(cache)
    data = entry.read_bytes()
    if damage == "garbage":
        entry.write_bytes(b"WALLEMDL" + os.urandom(200))
    elif damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    else:  # a weight said to lie past the end of the model file
        header_len = int.from_bytes(data[12:20], "little")
        header = json.loads(data[20:20 + header_len])
        header["constants"][0]["source_offset"] = path.stat().st_size
        blob = json.dumps(header).encode()
        entry.write_bytes(data[:12] + len(blob).to_bytes(8, "little") + blob)
    session, got = _run(path)
    assert not isinstance(session.model, CompiledModel)
    np.testing.assert_array_equal(got, expected)
    assert isinstance(_run(path)[0].model, CompiledModel)  # written anew


def test_source_offsets_need_the_source(tmp_path, cache):
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _run(path)
    (entry,) = _entries(cache)
    with pytest.raises(ModelError, match="stored in the source model file, which was not given"):
        CompiledModel(entry)
    with pytest.raises(ModelError, match="past the end of the source model"):
        CompiledModel(entry, source=b"\0" * 16)


def test_what_is_not_cached(tmp_path, cache, monkeypatch):
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(example_cnn(), dynamic)  # symbolic batch
    wc.load(dynamic).run({"image": INPUT})
    wc.load(_static_cnn().SerializeToString())
    wc.load(_static_cnn())
    assert _entries(cache) == []

    static = tmp_path / "static.onnx"
    onnx.save(_static_cnn(), static)
    monkeypatch.setenv(model_cache.SWITCH, "0")
    _run(static)
    assert _entries(cache) == []


def test_external_weights_are_not_cached(tmp_path, cache):
    path = tmp_path / "ext.onnx"
    onnx.save(_static_cnn(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    _, expected = _run(path)
    assert _entries(cache) == []
    np.testing.assert_array_equal(_run(path)[1], expected)


def test_sequence_outputs_are_not_cached(tmp_path, cache):
    graph = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x"], ["s"], axis=0)], "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for _ in range(2):
        session = wc.load(path)
        assert [a.tolist() for a in session.run({"x": x})["s"]] == [[row] for row in x.tolist()]
    assert _entries(cache) == []


def test_an_entry_made_by_other_walle_code_is_replaced(tmp_path, cache, monkeypatch):
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _run(path)
    (old,) = _entries(cache)
    monkeypatch.setattr(model_cache, "_code_stamp", lambda: "another walle")
    session, _ = _run(path)
    assert not isinstance(session.model, CompiledModel)
    (new,) = _entries(cache)
    assert new != old and new.name.split("-")[0] == old.name.split("-")[0]



def test_the_plugin_selection_is_part_of_the_key(tmp_path, cache, monkeypatch):
    """WALLE_PLUGINS decides which plugins' decomposition rules lower the model."""
    path = tmp_path / "cnn.onnx"
    all_plugins = model_cache._entry_path(path)
    monkeypatch.setenv("WALLE_PLUGINS", "")
    assert model_cache._entry_path(path) != all_plugins


def test_the_least_recently_used_entries_go(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(model_cache, "MAX_ENTRIES", 2)
    paths = [tmp_path / f"cnn{i}.onnx" for i in range(3)]
    for i, path in enumerate(paths[:2]):
        onnx.save(_static_cnn(seed=i), path)
        _run(path)
    os.utime(model_cache._entry_path(paths[0]), ns=(0, 0))  # the older of the two ...
    os.utime(model_cache._entry_path(paths[1]), ns=(10**9, 10**9))
    assert isinstance(_run(paths[0])[0].model, CompiledModel)  # ... until used again
    onnx.save(_static_cnn(seed=2), paths[2])
    _run(paths[2])
    assert len(_entries(cache)) == 2
    assert isinstance(_run(paths[0])[0].model, CompiledModel)
    assert not isinstance(_run(paths[1])[0].model, CompiledModel)


def test_no_home_directory_means_no_cache(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("WALLE_CACHE_DIR")

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    path = tmp_path / "cnn.onnx"
    onnx.save(_static_cnn(), path)
    _, expected = _run(path)
    session, got = _run(path)
    assert not isinstance(session.model, CompiledModel)
    np.testing.assert_array_equal(got, expected)

