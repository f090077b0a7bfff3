"""Smoke test of the benchmark suite (benchmarks/run.py): ``--quick`` sizes, the numpy peer and
lamina's numpy backend only (no torch, no jax); checks the table and the JSON report. The
suite's lamina workloads, run on every available backend, equal the numpy peer's results. The
hand-written numpy forward and backward passes of the network workloads (benchmarks/nets.py,
the float64 references) equal PyTorch's autograd in float64 where torch is installed."""

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
TIMED = ("gelu", "softmax", "layernorm", "matmul512", "matmul1024", "mlp_step", "cnn_train",
         "transformer_train", "attention_long", "lstm_train")
# the compile-time rows
STEPS = ("mlp_step", "cnn_train", "transformer_train", "lstm_train", "lstm_train_t500")


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

    assert [(c["step"], c["impl"]) for c in report["compile"]] == \
        [(s, "lamina[numpy]") for s in STEPS]
    for comp in report["compile"]:
        assert comp["status"] == "ok", comp
        assert comp["cold"]["calls_s"][0] > 0 and comp["warm"]["calls_s"][0] > 0
        assert comp["cold"]["step"] == comp["step"]

    for impl in ("lamina[numpy]", "numpy"):  # peak memory, measured in fresh processes
        mem = rows[("attention_long", impl)]["memory"]
        assert "error" not in mem, mem
        assert mem["base_mib"] > 0 and mem["peak_mib"] >= mem["held_mib"] - 1.0
        assert math.isclose(mem["call_mib"], mem["peak_mib"] - mem["held_mib"])
    assert rows[("attention_long", "numpy")]["mem_vs_least_peer"] == 1.0

    table = p.stdout
    assert "t / best peer" in table and "cold s" in table and "peak MiB" in table
    for title in {r["title"] for r in rows.values()}:
        assert title in table
    # a row per timed workload, one in the memory table, one per compiled step
    assert table.count("lamina[numpy]") == len(TIMED) + 1 + len(STEPS)


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


@pytest.mark.parametrize("name", ["cnn_train", "transformer_train", "lstm_train"])
def test_check_catches_a_wrong_update(run, name):
    """A train step's check sees a parameter update that is 1% off (beyond float32 rounding)."""
    wl = run.make_workload(name, quick=True)
    got = [r.astype(np.float32) for r in wl.reference]
    assert run.check(wl, got) <= wl.tol
    i = len(got) // 2
    got[i] = (wl.initial[i - 1] + 1.01 * (wl.reference[i] - wl.initial[i - 1])).astype(np.float32)
    assert run.check(wl, got) > wl.tol


def test_references_equal_torch_autograd(run):
    """nets.py's hand-written forward, backward and SGD update, in float64, against PyTorch's
    modules and autograd (benchmarks/peers.py's torch versions, run in float64)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    peer = run.peers.make("torch", 1)  # sets torch's threads: restored below
    for name in ("cnn_train", "transformer_train", "attention_long", "lstm_train"):
        wl = run.make_workload(name, quick=True)
        f8 = {k: (v.astype(np.float64) if getattr(v, "dtype", None) == np.float32 else v)
              for k, v in wl.inputs.items()}
        if "params" in f8:
            f8["params"] = {k: v.astype(np.float64) for k, v in f8["params"].items()}
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # the torch modules' parameters in float64
        try:
            runner = peer.build(wl.peer_method, f8)
            got = runner.fetch(runner.call())
        finally:
            torch.set_default_dtype(default)
            torch.set_num_threads(threads)
        assert len(got) == len(wl.reference)
        for g, r in zip(got, wl.reference):
            assert g.dtype == np.float64
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12 * np.abs(r).max(),
                                       err_msg=name)


def test_full_size_attention_leaves_out_the_reference_backend(run):
    """By default the full-size attention_long does not run lamina's numpy backend (~8 GiB)."""
    assert run.too_big("lamina[numpy]", "attention_long", quick=False)
    assert not run.too_big("lamina[numpy]", "attention_long", quick=True)
    assert not run.too_big("lamina[llvm]", "attention_long", quick=False)
    assert not run.too_big("lamina[numpy]", "cnn_train", quick=False)


def test_check_catches_a_wrong_result(run):
    wl = run.make_workload("softmax", quick=True)
    wrong = wl.reference[0].astype(np.float32).copy()
    wrong[0, 0] += 0.01
    assert run.check(wl, [wrong]) > wl.tol
