"""Smoke test of the benchmark suite (benchmarks/run.py): ``--quick`` sizes, the numpy peer and
lamina's numpy backend only (no torch, no jax); checks the table and the JSON report. The
suite's lamina workloads, run on every available backend, equal the numpy peer's results."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TIMED = ("gelu", "softmax", "layernorm", "matmul512", "matmul1024", "mlp_step")


def _load_run():
    spec = importlib.util.spec_from_file_location("lamina_bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    return _load_run()


def test_quick_suite_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--peers", "numpy",
                        "--backends", "numpy", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["quick"]
    assert report["backends"] == ["numpy"]
    assert report["machine"]["copy_ws_1t"]["median"] > 0
    assert report["machine"]["fma_1t"]["gflops"] > 0

    rows = {(r["workload"], r["impl"]): r for r in report["rows"]}
    assert set(rows) == {(w, i) for w in TIMED for i in ("lamina[numpy]", "numpy")}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["err"] <= r["tol"], r
        assert 0 < r["min_s"] <= r["median_s"]
        assert r["throughput"] > 0 and r["best_peer"] == "numpy"
        assert math.isclose(r["vs_best_peer"],
                            r["median_s"] / rows[(r["workload"], "numpy")]["median_s"])

    (comp,) = report["compile"]
    assert comp["impl"] == "lamina[numpy]" and comp["status"] == "ok"
    assert comp["cold"]["calls_s"][0] > 0 and comp["warm"]["calls_s"][0] > 0

    table = p.stdout
    assert "t / best peer" in table and "cold s" in table
    for title in {r["title"] for r in rows.values()}:
        assert title in table
    assert table.count("lamina[numpy]") == len(TIMED) + 1


@pytest.mark.parametrize("name", TIMED)
def test_lamina_equals_numpy_peer(run, name, backend):
    wl = run.make_workload(name, quick=True)
    lam = run.lamina_runner(wl, backend)
    ref = run.peers.make("numpy", 1).build(wl.peer_method, wl.inputs)
    got, want = lam.fetch(lam.call()), ref.fetch(ref.call())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6 * np.abs(w).max())
    assert run.check(wl, got) <= wl.tol


def test_check_catches_a_wrong_result(run):
    wl = run.make_workload("softmax", quick=True)
    wrong = wl.reference[0].astype(np.float32).copy()
    wrong[0, 0] += 0.01
    assert run.check(wl, [wrong]) > wl.tol
