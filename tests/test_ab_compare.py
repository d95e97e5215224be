"""walle_core.testing.ab: each variant is compiled under its own setting, every op gets a time
from both, and the environment is left as it was."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import helper
from onnx_models import make_model

from walle_core.errors import BackendError
from walle_core.testing import ab

pytest.importorskip("walle_cpu_x86")

WINOGRAD_ENV = "WALLE_CPU_X86_WINOGRAD"


@pytest.fixture
def conv_model(tmp_path) -> str:
    """A 3x3 convolution Winograd may take, a ReLU and a 1x1 convolution."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["y"])]
    inits = {"w3": rng.standard_normal((16, 16, 3, 3)).astype(np.float32),
             "w1": rng.standard_normal((8, 16, 1, 1)).astype(np.float32)}
    model = make_model(nodes, {"x": np.zeros((1, 16, 20, 20), np.float32)}, ["y"], inits)
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_every_op_gets_a_time_under_both_settings(conv_model, monkeypatch, capsys):
    monkeypatch.delenv(WINOGRAD_ENV, raising=False)
    monkeypatch.delenv("WALLE_PROFILE", raising=False)
    rows = ab.compare(conv_model, WINOGRAD_ENV, ("0", "4"), runs=3, backend="cpu_x86")
    assert [r.index for r in rows] == list(range(len(rows)))
    assert len(rows) == 2  # the two convolutions, the ReLU fused into the first
    assert all(np.isfinite(r.ms_a) and r.ms_a > 0 and np.isfinite(r.ms_b) and r.ms_b > 0 for r in rows)
    assert WINOGRAD_ENV not in os.environ and "WALLE_PROFILE" not in os.environ

    assert ab.main([conv_model, "--env", WINOGRAD_ENV, "0", "unset", "--runs", "2", "--backend", "cpu_x86"]) == 0
    assert "sum of per-op minima" in capsys.readouterr().out


def test_each_variant_is_compiled_under_its_own_value(conv_model, monkeypatch):
    monkeypatch.setenv(WINOGRAD_ENV, "2")
    with pytest.raises(BackendError, match=f"{WINOGRAD_ENV}='bogus'"):
        ab.compare(conv_model, WINOGRAD_ENV, ("0", "bogus"), runs=1, backend="cpu_x86")
    assert os.environ[WINOGRAD_ENV] == "2"


def test_report_lists_the_ops_that_differ_and_the_totals():
    rows = [ab.OpTimes(0, "conv2d", "/a", 1.0, 1.2), ab.OpTimes(1, "pool2d", "/b", 0.5, 0.51),
            ab.OpTimes(2, "raster", "/c", 0.0001, 0.0004)]
    text = ab.report(rows, ("0", "4"), threshold=0.05)
    assert "conv2d (/a)" in text and "pool2d" not in text and "raster" not in text
    assert "1.500 ms against 1.710 ms" in text and "3 ops, 1 differ" in text


def test_at_least_one_run(conv_model):
    with pytest.raises(ValueError, match="runs must be at least 1"):
        ab.compare(conv_model, WINOGRAD_ENV, ("0", "4"), runs=0, backend="cpu_x86")
