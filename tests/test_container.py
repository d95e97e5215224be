"""The compute container: isolation, limits, scheduling, persistence and the `walle task` CLI.

Every fault here is real (a Python infinite loop, a segfault, an allocation past the limit)
and every expectation is either an exact value or NumPy / a directly-run session.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import walle_core
from walle_core.cli.task import task_group
from walle_core.container import Container, QueueFull, TaskFailed
from walle_core.container.container import GRACE_S


def write_task(root: Path, name: str, files: dict[str, str | bytes], timeout_s: float | None = None,
               memory_mb: float | None = None, mode: str = "thread", models: str = "") -> Path:
    """A task directory: task.toml from the arguments plus ``files`` (``main.py`` is the entry)."""
    root.mkdir(parents=True, exist_ok=True)
    limits = "".join(f"{key} = {value}\n" for key, value in
                     (("timeout_s", timeout_s), ("memory_mb", memory_mb)) if value is not None)
    (root / "task.toml").write_text(
        f'name = "{name}"\nversion = "1"\nentry = "main.py"\n{models}\n'
        f'[limits]\n{limits}[isolation]\nmode = "{mode}"\n')
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return root


def simple_task(root: Path, name: str, body: str, **kwargs: object) -> Path:
    """A task whose ``run(ctx, inputs)`` is ``body`` (numpy, os, signal, time imported)."""
    source = "import os, signal, time\nimport numpy as np\n\ndef run(ctx, inputs):\n" + textwrap.indent(
        textwrap.dedent(body), "    ")
    return write_task(root, name, {"main.py": source}, **kwargs)  # type: ignore[arg-type]


def failure(handle, timeout: float = 20) -> TaskFailed:  # type: ignore[no-untyped-def]
    with pytest.raises(TaskFailed) as info:
        handle.result(timeout)
    return info.value


def wait_running(handle) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while handle.status != "running":
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.005)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Container]:
    with Container(workers=2, state_dir=tmp_path / "state") as container:
        yield container


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[Container]:
    with Container(workers=1, state_dir=tmp_path / "state", queue_size=2) as container:
        yield container


@pytest.fixture(scope="module")
def process_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """One container (and its worker-process pool) for all process-mode tests: starting the
    pool is the slow part."""
    with Container(workers=2, state_dir=tmp_path_factory.mktemp("state")) as container:
        yield container


# -- thread-mode isolation ----------------------------------------------------------------------
def namespaced_task(root: Path, name: str) -> Path:
    return write_task(root, name, {
        "utils.py": f"NAME = {name!r}\n\ndef tag():\n    return 'utils of ' + NAME\n",
        "lib/__init__.py": "",
        "lib/deep.py": f"WHO = {name!r} + '.lib.deep'\n",
        "main.py": """
            import utils
            from lib.deep import WHO
            from . import utils as relative_utils

            HITS = []

            def run(ctx, inputs):
                HITS.append(1)
                assert relative_utils is utils
                return {"utils": utils.tag(), "deep": WHO, "hits": len(HITS)}
        """,
    })


def test_tasks_with_same_named_modules_do_not_see_each_other(box: Container, tmp_path: Path) -> None:
    alpha = namespaced_task(tmp_path / "alpha", "alpha")
    beta = namespaced_task(tmp_path / "beta", "beta")
    handles = [(name, box.submit(d)) for _ in range(5) for name, d in (("alpha", alpha), ("beta", beta))]
    for name, handle in handles:
        result = handle.result(10)
        assert result["utils"] == f"utils of {name}" and result["deep"] == f"{name}.lib.deep"
    for name in ("alpha", "beta"):  # module globals are per task: each saw only its own 5 runs
        assert max(h.result()["hits"] for n, h in handles if n == name) == 5
    assert "utils" not in sys.modules and "lib" not in sys.modules and "lib.deep" not in sys.modules
    # a third task without a utils.py cannot reach either of them
    gamma = simple_task(tmp_path / "gamma", "gamma", "import utils\nreturn {}\n")
    assert "No module named 'utils'" in failure(box.submit(gamma)).message


def test_exception_is_captured_with_the_task_traceback(box: Container, tmp_path: Path) -> None:
    root = write_task(tmp_path / "bad", "bad", {
        "helpers.py": "def parse(x):\n    raise ValueError(f'bad input {x}')\n",
        "main.py": "import helpers\n\ndef run(ctx, inputs):\n    return helpers.parse(inputs['x'])\n",
    })
    error = failure(box.submit(root, {"x": 7}))
    assert error.status == "error" and error.message == "ValueError: bad input 7"
    assert "main.py" in error.traceback and "helpers.py" in error.traceback and "in parse" in error.traceback
    assert "runner.py" not in error.traceback  # the container's own frames are not the task's
    ok = simple_task(tmp_path / "ok", "ok", "return {'x': inputs['x'] + 1}\n")
    assert box.submit(ok, {"x": 1}).result(10) == {"x": 2}


@pytest.mark.parametrize("body", [
    "while True:\n    pass\n",
    "def spin():\n    return 1\nwhile True:\n    spin()\n",
    "total = 0\nwhile True:\n    try:\n        total += 1\n    except Exception:\n        pass\n",
], ids=["bare-loop", "calling-loop", "except-exception-loop"])
def test_timeout_interrupts_a_python_infinite_loop(one_worker: Container, tmp_path: Path, body: str) -> None:
    loop = simple_task(tmp_path / "loop", "loop", body, timeout_s=0.3)
    start = time.monotonic()
    error = failure(one_worker.submit(loop))
    assert error.status == "timeout" and "timeout_s = 0.3" in error.message
    assert 0.3 <= time.monotonic() - start < 0.3 + GRACE_S
    assert "main.py" in error.traceback
    # the same (only) worker thread serves the next task: the loop really stopped
    ok = simple_task(tmp_path / "ok", "ok", "return {'v': 1}\n")
    assert one_worker.submit(ok).result(5) == {"v": 1}
    assert one_worker.stats()["abandoned_threads"] == 0


def test_task_that_swallows_the_stop_is_abandoned_and_replaced(one_worker: Container, tmp_path: Path) -> None:
    stubborn = simple_task(tmp_path / "stubborn", "stubborn", """
        try:
            while True:
                pass
        except BaseException:
            pass
        time.sleep(3 * inputs['grace'])
        return {}
    """, timeout_s=0.2)
    error = failure(one_worker.submit(stubborn, {"grace": GRACE_S}))
    assert error.status == "timeout" and "worker thread was replaced" in error.message
    ok = simple_task(tmp_path / "ok", "ok", "return {'v': 2}\n")
    assert one_worker.submit(ok).result(5) == {"v": 2}
    assert one_worker.stats()["abandoned_threads"] == 1


def test_cancel_queued_and_running(one_worker: Container, tmp_path: Path) -> None:
    loop = simple_task(tmp_path / "loop", "loop", "while True:\n    pass\n")
    running = one_worker.submit(loop)
    wait_running(running)
    queued = one_worker.submit(loop)
    assert queued.cancel() and queued.status == "cancelled"
    assert "before it started" in failure(queued).message
    assert running.cancel()
    assert failure(running).status == "cancelled"
    assert not running.cancel()  # already finished
    assert one_worker.stats()["done"]["cancelled"] == 2


def test_thread_mode_memory_limit_counts_context_allocations(box: Container, tmp_path: Path) -> None:
    greedy = simple_task(tmp_path / "greedy", "greedy", "ctx.alloc((1024, 1024), np.float32)\nreturn {}\n",
                         memory_mb=2)
    error = failure(box.submit(greedy))
    assert error.status == "memory" and "limit is 2.0 MiB" in error.message
    # freed arrays give their bytes back: 20 x 0.8 MiB in sequence fits in 1 MiB
    frugal = simple_task(tmp_path / "frugal", "frugal", """
        for _ in range(20):
            block = ctx.alloc(200_000, np.float32)
            del block
        return {"peak": ctx.memory.peak, "live": ctx.memory.live}
    """, memory_mb=1)
    assert box.submit(frugal).result(10) == {"peak": 800_000, "live": 0}


# -- scheduling ---------------------------------------------------------------------------------
def gate_task(tmp_path: Path) -> Path:
    return simple_task(tmp_path / "gate", "gate", "inputs['gate'].wait(10)\nreturn {}\n")


def test_higher_priority_runs_first(one_worker: Container, tmp_path: Path) -> None:
    gate, order = threading.Event(), []
    blocker = one_worker.submit(gate_task(tmp_path), {"gate": gate})
    wait_running(blocker)
    record = simple_task(tmp_path / "record", "record", "inputs['order'].append(inputs['label'])\nreturn {}\n")
    one_worker.submit(record, {"order": order, "label": "low"}, priority=0)
    one_worker.submit(record, {"order": order, "label": "high"}, priority=10)
    gate.set()
    blocker.result(5)
    with Container(workers=1, state_dir=tmp_path / "state2", queue_size=8) as box:
        gate2 = threading.Event()
        blocker = box.submit(gate_task(tmp_path), {"gate": gate2})
        wait_running(blocker)
        handles = [box.submit(record, {"order": order, "label": label}, priority=p)
                   for label, p in (("a0", 0), ("b5", 5), ("c10", 10), ("d5", 5), ("e10", 10), ("f0", 0))]
        gate2.set()
        for handle in handles:
            handle.result(5)
    assert order == ["high", "low", "c10", "e10", "b5", "d5", "a0", "f0"]


def test_full_queue_pushes_back(one_worker: Container, tmp_path: Path) -> None:
    gate = threading.Event()
    blocker = one_worker.submit(gate_task(tmp_path), {"gate": gate})
    wait_running(blocker)
    ok = simple_task(tmp_path / "ok", "ok", "return {'i': inputs['i']}\n")
    queued = [one_worker.submit(ok, {"i": i}) for i in range(2)]  # queue_size=2: now full
    assert one_worker.stats()["queued"] == 2
    with pytest.raises(QueueFull):
        one_worker.submit(ok, {"i": 2}, block=False)
    start = time.monotonic()
    with pytest.raises(QueueFull):
        one_worker.submit(ok, {"i": 2}, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    late: list = []
    submitter = threading.Thread(target=lambda: late.append(one_worker.submit(ok, {"i": 2})))
    submitter.start()
    time.sleep(0.1)
    assert submitter.is_alive()  # blocked by back-pressure
    gate.set()
    submitter.join(5)
    assert [h.result(5)["i"] for h in [*queued, *late]] == [0, 1, 2]


# -- persistence and context ----------------------------------------------------------------------
def test_kv_and_scratch_survive_a_container_restart(tmp_path: Path) -> None:
    counter = simple_task(tmp_path / "counter", "counter", """
        n = ctx.kv.get("n", 0) + 1
        ctx.kv["n"] = n
        ctx.kv.set("history", ctx.kv.get("history", []) + [n])
        (ctx.scratch / f"run{n}.txt").write_text(str(n))
        return {"n": n, "files": sorted(p.name for p in ctx.scratch.iterdir())}
    """)
    state = tmp_path / "state"
    with Container(workers=1, state_dir=state) as box:
        assert [box.submit(counter).result(5)["n"] for _ in range(3)] == [1, 2, 3]
    with Container(workers=1, state_dir=state) as box:
        result = box.submit(counter).result(5)
    assert result == {"n": 4, "files": ["run1.txt", "run2.txt", "run3.txt", "run4.txt"]}
    with Container(workers=1, state_dir=state) as box:
        read = simple_task(tmp_path / "reader", "counter", "return {'h': ctx.kv['history'], 'log': ctx.log.name}\n")
        assert box.submit(read).result(5) == {"h": [1, 2, 3, 4], "log": "walle.task.counter"}


def test_config_is_private_per_run(box: Container, tmp_path: Path) -> None:
    root = simple_task(tmp_path / "cfg", "cfg", "ctx.config['seen'].append(1)\nreturn {'seen': ctx.config['seen']}\n")
    with open(root / "task.toml", "a") as toml:
        toml.write("[config]\nseen = []\n")
    assert [box.submit(root).result(5)["seen"] for _ in range(3)] == [[1], [1], [1]]


# -- models ---------------------------------------------------------------------------------------
def dense_model(seed: int = 0) -> onnx.ModelProto:
    """y = relu(x @ W + b), x: [N, 8] (N symbolic), y: [N, 5]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_task_matches_the_session_run_directly(box: Container, tmp_path: Path) -> None:
    model = dense_model()
    root = write_task(tmp_path / "dense", "dense", {
        "dense.onnx": model.SerializeToString(),
        "main.py": """
            def run(ctx, inputs):
                net = ctx.model("dense")
                y = net.run({"x": inputs["x"]})["y"]
                return {"y": y, "held": ctx.memory.live}
        """}, models='models = ["dense.onnx"]', memory_mb=1)
    direct = walle_core.load(model)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 4, 3, 1, 2)]
    handles = [box.submit(root, {"x": x}) for x in xs]
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for x, handle in zip(xs, handles):
        result = handle.result(20)
        np.testing.assert_array_equal(result["y"], direct.run({"x": x})["y"])
        np.testing.assert_allclose(result["y"], np.maximum(x @ weights["W"] + weights["b"], 0), rtol=1e-5,
                                   atol=1e-5)
        assert result["held"] == result["y"].nbytes  # the output is accounted to the task
    assert box.load(root) is box.load(root)  # loaded once, cached
    fits = box.submit(root, {"x": np.zeros((20_000, 8), np.float32)})  # 0.4 MB of output: within 1 MiB
    assert fits.result(20)["y"].shape == (20_000, 5)
    over = box.submit(root, {"x": np.zeros((60_000, 8), np.float32)})  # 1.2 MB of output: past 1 MiB
    assert failure(over).status == "memory"


# -- process mode ---------------------------------------------------------------------------------
def test_process_mode_memory_limit(process_box: Container, tmp_path: Path) -> None:
    hog = simple_task(tmp_path / "hog", "hog", "a = np.ones(64 * 2**20)\nreturn {'s': float(a.sum())}\n",
                      memory_mb=128, mode="process")  # 512 MiB of float64 against a 128 MiB limit
    error = failure(process_box.submit(hog))
    assert error.status == "memory" and "Unable to allocate" in error.message
    fits = simple_task(tmp_path / "fits", "fits", "a = np.ones(2**20)\nreturn {'s': float(a.sum())}\n",
                       memory_mb=128, mode="process")
    assert process_box.submit(fits).result(20) == {"s": float(2**20)}


@pytest.mark.parametrize("body", [
    "import faulthandler\nfaulthandler._sigsegv()\n",
    "os.kill(os.getpid(), signal.SIGSEGV)\n",
], ids=["faulthandler", "kill"])
def test_process_mode_segfault_is_a_crash_and_the_container_lives_on(process_box: Container, tmp_path: Path,
                                                                       body: str) -> None:
    replaced = process_box.stats()["replaced_processes"]
    crasher = simple_task(tmp_path / "segv", "segv", body, mode="process")
    error = failure(process_box.submit(crasher))
    assert error.status == "crash" and "SIGSEGV" in error.message
    ok = simple_task(tmp_path / "ok", "ok", "return {'pid': os.getpid(), 'x': inputs['x'] * 2}\n", mode="process")
    results = [process_box.submit(ok, {"x": i}).result(20) for i in range(4)]
    assert [r["x"] for r in results] == [0, 2, 4, 6]
    assert process_box.stats()["replaced_processes"] == replaced + 1


def test_process_mode_timeout_error_and_cancel(process_box: Container, tmp_path: Path) -> None:
    loop = simple_task(tmp_path / "loop", "ploop", "while True:\n    pass\n", timeout_s=0.5, mode="process")
    assert failure(process_box.submit(loop)).status == "timeout"
    bad = simple_task(tmp_path / "bad", "pbad", "raise KeyError('missing')\n", mode="process")
    error = failure(process_box.submit(bad))
    assert error.status == "error" and "KeyError: 'missing'" in error.traceback and "main.py" in error.traceback
    unpicklable = failure(process_box.submit(bad, {"lock": threading.Lock()}))
    assert unpicklable.status == "error" and "cannot be sent to a worker process" in unpicklable.message
    forever = simple_task(tmp_path / "forever", "pforever", "while True:\n    pass\n", mode="process")
    handle = process_box.submit(forever)
    wait_running(handle)
    handle.cancel()
    assert failure(handle).status == "cancelled"


# -- the isolation matrix of the issue -------------------------------------------------------------
def test_isolation_matrix(tmp_path: Path) -> None:
    """One task raising, one looping forever, one over its memory limit (in both modes) and one
    segfaulting in process mode, among good tasks: every good run completes correctly."""
    faults = {
        ("raise", "thread"): simple_task(tmp_path / "raise", "raise", "raise RuntimeError('oops')\n"),
        ("loop", "thread"): simple_task(tmp_path / "loop", "loop", "while True:\n    pass\n", timeout_s=0.5),
        ("memory", "thread"): simple_task(tmp_path / "mem", "mem", "ctx.alloc(2**20, np.float64)\nreturn {}\n",
                                          memory_mb=4),
        ("loop", "process"): simple_task(tmp_path / "ploop", "ploop", "while True:\n    pass\n", timeout_s=0.5,
                                         mode="process"),
        ("memory", "process"): simple_task(tmp_path / "pmem", "pmem", "a = np.ones(2**27)\nreturn {}\n",
                                           memory_mb=64, mode="process"),
        ("segfault", "process"): simple_task(tmp_path / "segv", "segv", "os.kill(os.getpid(), signal.SIGSEGV)\n",
                                             mode="process"),
    }
    expected = {"raise": "error", "loop": "timeout", "memory": "memory", "segfault": "crash"}
    good_body = "m = inputs['m']\nreturn {'det': float(np.linalg.det(m)), 'sum': float(m.sum())}\n"
    good = [simple_task(tmp_path / f"good{i}", f"good{i}", good_body, mode="process" if i == 3 else "thread")
            for i in range(4)]
    rng = np.random.default_rng(0)
    with Container(workers=2, state_dir=tmp_path / "state") as box:
        fault_handles = {key: box.submit(root) for key, root in faults.items()}
        good_runs = []
        for i in range(24):
            m = rng.standard_normal((4, 4))
            good_runs.append((m, box.submit(good[i % 4], {"m": m})))
        for m, handle in good_runs:
            assert handle.result(30) == {"det": float(np.linalg.det(m)), "sum": float(m.sum())}
        for (fault, mode), handle in fault_handles.items():
            assert failure(handle, 30).status == expected[fault], (fault, mode)
        stats = box.stats()
    assert stats["done"]["ok"] == 24 and stats["done"]["crash"] == 1 and stats["abandoned_threads"] == 0


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_task_run_json(tmp_path: Path) -> None:
    ok = simple_task(tmp_path / "ok", "ok", "return {'s': float(inputs['a'].sum())}\n")
    bad = simple_task(tmp_path / "bad", "bad", "raise ValueError('nope')\n")
    np.savez(tmp_path / "in.npz", a=np.arange(6.0))
    args = ["--concurrency", "2", "--repeat", "3", "--inputs", str(tmp_path / "in.npz"),
            "--state-dir", str(tmp_path / "state"), "--json"]
    result = CliRunner().invoke(task_group, ["run", str(ok), *args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["concurrency"] == 2 and report["throughput_per_s"] > 0
    (task,) = report["tasks"]
    assert (task["name"], task["status"], task["runs"], task["error"]) == ("ok", "ok", 3, None)
    assert set(task["latency_ms"]) == {"p50", "p99"} and task["latency_ms"]["p99"] >= task["latency_ms"]["p50"]
    result = CliRunner().invoke(task_group, ["run", str(ok), str(bad), *args])
    assert result.exit_code == 1
    statuses = {t["name"]: (t["status"], t["error"]) for t in json.loads(result.output)["tasks"]}
    assert statuses == {"ok": ("ok", None), "bad": ("error", "ValueError: nope")}


def test_cli_task_run_table_and_check(tmp_path: Path) -> None:
    root = write_task(tmp_path / "dense", "dense", {
        "dense.onnx": dense_model().SerializeToString(),
        "main.py": "def run(ctx, inputs):\n    return {}\n"}, models='models = ["dense.onnx"]', timeout_s=2)
    result = CliRunner().invoke(task_group, ["run", str(root), "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 0 and "dense" in result.output and "runs/s" in result.output
    result = CliRunner().invoke(task_group, ["check", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["name"] == "dense" and report["limits"]["timeout_s"] == 2.0
    assert report["models"][0]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 8]}]
    (root / "task.toml").write_text((root / "task.toml").read_text().replace("timeout_s", "timeout"))
    result = CliRunner().invoke(task_group, ["check", str(root), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["field"] == "limits.timeout"
