"""The ONNX node-conformance pass count may only go up: the shared harness (beside the
repository in ../shared/conformance) runs every case in isolated workers against the installed
engine, and the result must meet the committed floor (raise it as coverage grows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "conformance" / "onnx_node_conformance.py"
FLOOR = json.loads((Path(__file__).with_name("conformance_floor.json")).read_text())


@pytest.mark.skipif(not HARNESS.exists(), reason="the shared conformance harness is not beside this checkout")
def test_conformance_meets_the_committed_floor(tmp_path):
    out = tmp_path / "walle.json"
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--runner", "walle_core.testing.onnx_runner:run", "-j", "2",
         "--cache-dir", str(tmp_path / "node_data"), "--log-dir", str(tmp_path / "logs"), "--out", str(out)],
        capture_output=True, text=True, timeout=1200, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["crash"] == FLOOR["crash"] and summary["timeout"] == FLOOR["timeout"], summary
    assert summary["pass"] >= FLOOR["pass"], summary
    assert summary["ops_with_direct_pass"] >= FLOOR["ops_with_direct_pass"], summary
