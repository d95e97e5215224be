"""The installed distributions: extras, entry points, console script, and a core that
works with no native backend at all. Run after `make install` (`make test` does both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest


@pytest.fixture
def walle_dist() -> metadata.Distribution:
    try:
        return metadata.distribution("walle")
    except metadata.PackageNotFoundError:
        pytest.fail("the `walle` distribution is not installed; run `make test`, which installs the wheels")


def test_walle_declares_the_backend_extras(walle_dist):
    meta = walle_dist.metadata
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"cpu-x86", "opencl", "stream", "deploy", "all"} <= extras
    requires = [r.replace(" ", "") for r in meta.get_all("Requires-Dist") or []]
    # the deploy extra brings the server's C event loop and HTTP parser along ([fast])
    for extra, dist in (("cpu-x86", "walle-cpu-x86"), ("opencl", "walle-opencl"), ("stream", "walle-stream"),
                        ("deploy", "walle-deploy[fast]")):
        assert f'{dist};extra=="{extra}"' in requires
        assert f'{dist};extra=="all"' in requires


def test_walle_depends_on_the_core_libraries_only(walle_dist):
    unconditional = {r.split(";")[0].strip().lower() for r in walle_dist.metadata.get_all("Requires-Dist") or []
                     if "extra ==" not in r}
    assert unconditional == {"numpy", "onnx", "pluggy", "rich", "click", "ml_dtypes"}


def test_console_script_points_at_the_cli(walle_dist):
    (script,) = [ep for ep in walle_dist.entry_points if ep.group == "console_scripts"]
    assert script.name == "walle"
    assert script.value == "walle_core.cli:main"


@pytest.mark.parametrize("name,dist", [("cpu_x86", "walle-cpu-x86"), ("opencl", "walle-opencl"),
                                       ("stream", "walle-stream"), ("deploy", "walle-deploy")])
def test_parts_are_installed_walle_plugins(name, dist):
    plugins = {ep.name: ep for ep in metadata.entry_points(group="walle")}
    assert name in plugins, f"entry points in group walle: {sorted(plugins)}"
    assert plugins[name].dist is not None and plugins[name].dist.name == dist


def test_walle_wheel_ships_only_walle_core(walle_dist):
    files = walle_dist.files or []
    top_level = {f.parts[0] for f in files if not f.parts[0].endswith((".dist-info", ".data"))}
    top_level.discard("..")  # the console script lands in bin/
    assert top_level == {"walle_core"}
    assert not any("tests" in f.parts or "backends" in f.parts for f in files)


def _run_python(code: str, **env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


CORE_ONLY = """
import json, numpy as np, sys
from onnx import TensorProto, helper
import walle_core as wc
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
y = wc.load(model).run({"x": np.array([-1, 2, -3, 4], np.float32)})["y"]
print(json.dumps({"available": wc.plugins.available_backends(), "y": y.tolist(),
                  "broken": sorted(wc.plugins.broken_plugins()),
                  "native_loaded": "walle_cpu_x86" in sys.modules}))
"""


def test_core_runs_with_installed_plugins_disabled():
    report = _run_python(CORE_ONLY, WALLE_PLUGINS="")
    assert report["available"] == ["reference"]
    assert report["y"] == [0.0, 2.0, 0.0, 4.0]
    assert report["native_loaded"] is False


def test_core_survives_a_backend_that_cannot_be_imported():
    # None in sys.modules makes `import walle_cpu_x86` raise ImportError, as a broken wheel would.
    report = _run_python("import sys; sys.modules['walle_cpu_x86'] = None\n" + CORE_ONLY)
    assert "cpu_x86" not in report["available"] and "reference" in report["available"]
    assert report["y"] == [0.0, 2.0, 0.0, 4.0]
    assert report["broken"] == ["cpu_x86"]
