"""The cpu_x86 packed-weight cache: a second load maps the weights the first one packed, gives
bit-identical results, and anything stale or damaged in the cache is packed afresh."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_models import make_model

import walle_core as wc

packed_cache = pytest.importorskip("walle_cpu_x86.packed_cache")


def _model(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Every kind of packed buffer: Winograd-eligible and 1x1 convolutions (weights as A), a
    stride-2 window (im2col), a 7x7 map with the pixels as rows (weights as B) and a matrix
    product. The stride-2 weights are large enough to be named by their place in the file; the
    others, among them those with the Mul folded in at load, by their bytes."""
    rng = np.random.default_rng(seed)
    weights = {
        "w3": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "scale": rng.standard_normal((1, 16, 1, 1)).astype(np.float32),
        "w1": rng.standard_normal((24, 16, 1, 1)).astype(np.float32) * 0.2,
        "ws2": rng.standard_normal((160, 24, 3, 3)).astype(np.float32) * 0.1,
        "wp": rng.standard_normal((96, 160, 1, 1)).astype(np.float32) * 0.1,
        "fc": rng.standard_normal((96, 10)).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a", "scale"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Conv", ["c", "w1"], ["d"]),
        helper.make_node("Conv", ["d", "ws2"], ["e"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["e", "wp"], ["f"]),
        helper.make_node("GlobalAveragePool", ["f"], ["g"]),
        helper.make_node("Flatten", ["g"], ["h"]),
        helper.make_node("MatMul", ["h", "fc"], ["y"]),
    ]
    x = rng.standard_normal((1, 8, 14, 14)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], weights), {"x": x}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of its own; model files just written count as settled."""
    monkeypatch.setenv("WALLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packed_cache, "_RACY_NS", 0)
    return tmp_path / "cache" / "cpu_x86_packed"


def _load(path, feeds):
    """Outputs and the buffers the plans packed themselves."""
    session = wc.load(path, backend="cpu_x86")
    outputs = session.run(feeds)
    packed = [p for exe in session.plan_for(feeds).executables for p in exe.plan.packed()]
    return outputs, packed


@pytest.mark.parametrize("winograd", ["0", "2", "4", "6"], ids=["gemm", "F(2,3)", "F(4,3)", "F(6,3)"])
def test_a_second_load_maps_what_the_first_packed(tmp_path, cache, monkeypatch, winograd) -> None:
    monkeypatch.setenv("WALLE_CPU_X86_WINOGRAD", winograd)
    model, feeds = _model(1)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    first, packed = _load(path, feeds)
    assert len(packed) == 5  # the four convolutions and the matrix product
    assert len(list(cache.glob("*.pack"))) == 5
    second, packed = _load(path, feeds)
    assert packed == []
    np.testing.assert_array_equal(second["y"], first["y"])
    reference = wc.load(path, backend="reference").run(feeds)["y"]
    np.testing.assert_allclose(second["y"], reference, rtol=1e-4, atol=1e-5)


def test_changed_weights_are_packed_afresh(tmp_path, cache) -> None:
    path = tmp_path / "m.onnx"
    for seed in (2, 3):  # same shapes, other weights, same path
        model, feeds = _model(seed)
        onnx.save_model(model, str(path))
        got, packed = _load(path, feeds)
        assert len(packed) == 5
        reference = wc.load(path, backend="reference").run(feeds)["y"]
        np.testing.assert_allclose(got["y"], reference, rtol=1e-4, atol=1e-5)
    assert len(list(cache.glob("*.pack"))) == 10


def _damage(files, how) -> None:
    for f in files:
        data = bytearray(f.read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        elif how == "magic":
            data[0] ^= 0xFF
        else:  # the first buffer's size, one float smaller: no longer what the kernel asks for
            data[24:32] = (int.from_bytes(data[24:32], "little") - 4).to_bytes(8, "little")
        f.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "magic", "size"])
def test_a_damaged_file_is_packed_afresh_and_replaced(tmp_path, cache, how) -> None:
    model, feeds = _model(4)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    first, _ = _load(path, feeds)
    files = sorted(cache.glob("*.pack"))
    _damage(files[:2], how)
    got, packed = _load(path, feeds)
    np.testing.assert_array_equal(got["y"], first["y"])
    # a size mismatch fails the whole plan's build, which then packs every op again
    assert len(packed) == (5 if how == "size" else 2)
    got, packed = _load(path, feeds)  # the damaged files were replaced
    assert packed == []
    np.testing.assert_array_equal(got["y"], first["y"])


def test_switched_off_it_neither_reads_nor_writes(tmp_path, cache, monkeypatch) -> None:
    model, feeds = _model(5)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    _load(path, feeds)
    monkeypatch.setenv("WALLE_PACKED_CACHE", "0")
    _, packed = _load(path, feeds)
    assert len(packed) == 5
    monkeypatch.delenv("WALLE_PACKED_CACHE")
    for f in cache.glob("*.pack"):
        f.unlink()
    monkeypatch.setenv("WALLE_PACKED_CACHE", "0")
    _load(path, feeds)
    assert not cache.exists() or not list(cache.glob("*.pack"))


def test_a_freshly_written_model_file_is_not_cached(tmp_path, cache, monkeypatch) -> None:
    """Its times may not change with a second write within the clock's granularity."""
    monkeypatch.setattr(packed_cache, "_RACY_NS", 3600 * 10**9)
    model, feeds = _model(6)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    _load(path, feeds)
    _, packed = _load(path, feeds)
    # the weights named by their bytes are cached, the stride-2 ones named by the file are not
    assert len(list(cache.glob("*.pack"))) == 4
    assert len(packed) == 1


def test_the_least_recently_used_files_go_past_the_limit(tmp_path, cache, monkeypatch) -> None:
    model, feeds = _model(7)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    _load(path, feeds)
    files = sorted(cache.glob("*.pack"), key=lambda f: f.stat().st_size)
    for age, f in enumerate(files):  # the smallest is the oldest
        os.utime(f, ns=(10**18 + age, 10**18 + age))
    sizes = [f.stat().st_size for f in files]
    monkeypatch.setattr(packed_cache, "MAX_BYTES", sum(sizes) - 1)
    stale = cache / ".x.pack.1.2.tmp"
    stale.write_bytes(b"left by a writer that died")
    os.utime(stale, (0, 0))
    packed_cache._evict(cache)
    assert sorted(cache.iterdir()) == sorted(files[1:])


def _aligned(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + 64, np.uint8)
    start = -raw.__array_interface__["data"][0] % 64
    return raw[start:start + nbytes]


def test_saved_buffers_that_do_not_fit_are_named(tmp_path, cache, monkeypatch) -> None:
    """What the plugin falls back from: the native plan rejects saved buffers it cannot use
    and says which op and why."""
    from walle_cpu_x86 import _ext

    captured = {}
    real = packed_cache.op_keys

    def spy(enc, *args):
        captured["enc"] = enc
        return real(enc, *args)

    monkeypatch.setattr(packed_cache, "op_keys", spy)
    model, _ = _model(8)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    wc.load(path, backend="cpu_x86")
    enc = captured["enc"]

    def build(saved):
        return _ext.Plan(enc.tensors, enc.constants, enc.inputs, enc.outputs, enc.ops, enc.arena_bytes, "",
                         _ext.ThreadPool(1), enc.reclaimable, enc.parts, saved)

    def only(op: int, buffers: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [buffers if i == op else [] for i in range(len(enc.ops))]

    conv = next(i for i, op in enumerate(enc.ops) if op[2].startswith("conv2d"))
    other = next(i for i, op in enumerate(enc.ops) if not op[2].startswith(("conv2d", "matmul")))
    with pytest.raises(ValueError, match=rf"op {conv} \(conv2d.*saved packed buffer 0 has 64 bytes, the kernel needs"):
        build(only(conv, [_aligned(64)]))
    with pytest.raises(ValueError, match=rf"op {other} \(.*was given 1 saved packed buffers and used 0"):
        build(only(other, [_aligned(64)]))
    with pytest.raises(ValueError, match="64-byte aligned"):
        build(only(conv, [_aligned(65)[1:]]))
    with pytest.raises(ValueError, match="one list of packed buffers per op"):
        build([[]])
    plan = build([])
    assert build([[b for o, _, b in plan.packed() if o == i] for i in range(len(enc.ops))]).packed() == []
