"""The GPU backend without a GPU: every op's kernels compile ahead of time to PTX and cubin for
sm_90 through Triton's compiler; half-precision numerics under Triton's interpreter; artifacts
built here carry the cubins the GPU runtime loads. (Every backend-parametrized test of the suite
also runs the triton backend under the interpreter: ``conftest.BACKENDS``.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from op_samples import SAMPLES
from test_ops import _traced_fn

import lamina as lm

triton = pytest.importorskip("triton")

from lamina.backends.triton import aot
from lamina.backends.triton.codegen import render
from lamina.backends.triton.spec import KernelBinary
from lamina.backends.triton.triton_backend import render_levels

needs_torch = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None,
    reason="Triton's interpreter needs torch (pip install 'lamina[triton-test]')")


def _sources_of(fn, *args):
    """The rendered kernels of ``fn`` compiled for these arguments, loop bodies' too (nothing
    runs)."""
    exe = lm.compile(fn, backend="numpy").lower(*args)
    from lamina.backends import get_backend
    from lamina.passes.manager import in_loop_bodies

    graph = exe.graph
    for p in get_backend("triton").passes:  # conv expansion, fusion
        graph = in_loop_bodies(p, graph)
    return [src for _, src in render_levels(graph).all_sources()]


def _check_binary(b: KernelBinary, src) -> None:
    assert b.target == "sm_90"
    assert b.cubin[:4] == b"\x7fELF", "a cubin is an ELF file"
    assert ".target sm_90" in b.ptx
    assert f".entry {b.name}(" in b.ptx
    # the user's pointers, then Triton's own scratch pointers
    assert len(b.params) >= len(src.signature)
    assert all(p == ".u64" for p in b.params[:len(src.signature)])


@pytest.mark.parametrize("op", sorted(SAMPLES))
def test_every_op_compiles_to_cubin_for_sm90(op):
    rng = np.random.default_rng(0)
    seen = set()
    count = 0
    for case in SAMPLES[op]:
        for d in case.dtypes:
            inputs = case.make(rng, np.dtype(d))
            attrs = case.attrs_for(np.dtype(d))
            for src in _sources_of(_traced_fn(op, attrs, len(inputs)), *inputs):
                for s in [*src.prologue, src]:
                    if s.source in seen:
                        continue
                    seen.add(s.source)
                    _check_binary(aot.compile_source(s, "sm_90"), s)
                    count += 1
    if op not in ("alias", "stop_gradient", "constant", "reshape"):
        assert count, f"{op}: no kernel was compiled"


def test_kernel_source_is_readable_and_named_after_what_it_fuses():
    x = np.ones((64, 100), np.float32)
    (src,) = _sources_of(lambda x: lm.softmax(x * 2.0), x)
    assert src.kind == "row" and src.name.startswith("fused_mul_max_sub_exp")
    assert src.source.startswith(f"# lamina kernel @{src.name} (row)")
    assert "@triton.jit" in src.source and "tl.reduce" in src.source
    compile(src.source, src.name, "exec")  # valid Python
    # one pass: 100 columns fit one tile; the grid covers the 64 rows
    assert "for c0 in range" not in src.source
    assert src.grid[0] * int(src.source.split("tl.arange(0, ")[1].split(")")[0]) >= 64


def test_long_rows_loop_over_chunks_and_gemm_uses_tl_dot():
    x = np.ones((4, 20000), np.float32)
    (row,) = _sources_of(lambda x: lm.softmax(x), x)
    assert "for c0 in range(0, 20000," in row.source
    a, b = np.ones((300, 200), np.float32), np.ones((200, 100), np.float32)
    (mm,) = _sources_of(lambda a, b: lm.relu(a @ b + 1.0), a, b)
    assert mm.kind == "gemm" and "tl.dot(" in mm.source and 'input_precision="ieee"' in mm.source
    assert "tl.maximum" in mm.source  # the epilogue is in the same kernel
    binary = aot.compile_source(mm, "sm_80")
    assert binary.target == "sm_80" and ".target sm_80" in binary.ptx


def test_half_types_compile_for_sm90():
    x = np.ones((32, 96), np.float32)
    w = np.ones((96, 64), np.float32)

    def f(x, w):
        h = lm.astype(x, lm.bfloat16) @ lm.astype(w, lm.bfloat16)
        return lm.astype(lm.softmax(lm.astype(h, lm.float32)), lm.float16)

    srcs = _sources_of(f, x, w)
    assert any("*bf16" in s.signature.values() for s in srcs)
    assert any("*fp16" in s.signature.values() for s in srcs)
    for s in srcs:
        _check_binary(aot.compile_source(s, "sm_90"), s)


# --- numerics of half types under the interpreter -------------------------------------------


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even), as float32."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


@needs_torch
def test_float16_chain_and_softmax_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 40)).astype(np.float16)
    f = lm.compile(lambda x: lm.softmax(lm.tanh(x * 1.5 + 0.25)), backend="triton")
    got = f(x)
    assert got.dtype == np.float16
    t = np.tanh(x.astype(np.float32) * np.float16(1.5) + np.float16(0.25))
    e = np.exp(t - t.max(1, keepdims=True))
    np.testing.assert_allclose(got.astype(np.float32), e / e.sum(1, keepdims=True),
                               rtol=1e-2, atol=1e-3)


@needs_torch
def test_bfloat16_matmul_matches_rounded_numpy():
    rng = np.random.default_rng(1)
    # inputs that bfloat16 holds exactly: the casts are exact under any rounding
    a = _bf16(rng.standard_normal((40, 72)).astype(np.float32))
    b = _bf16(rng.standard_normal((72, 24)).astype(np.float32))
    f = lm.compile(lambda a, b: lm.astype(lm.astype(a, lm.bfloat16) @ lm.astype(b, lm.bfloat16),
                                          lm.float32), backend="triton")
    want = _bf16(a.astype(np.float64) @ b.astype(np.float64))
    got = f(a, b)
    # products of bfloat16 are exact in float32; the sum is rounded once to bfloat16 (to
    # nearest on a GPU; Triton's interpreter truncates, up to one more unit in the last place)
    np.testing.assert_allclose(got, want, rtol=2 ** -6, atol=1e-6)


# --- artifacts ---------------------------------------------------------------------------------


@needs_torch
def test_artifact_built_without_gpu_holds_cubins_and_runs(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 30)).astype(np.float32)
    w = rng.standard_normal((30, 5)).astype(np.float32)
    f = lm.compile(lambda x, w: lm.softmax(x @ w), backend="triton")
    want = f(x, w)
    path = tmp_path / "f.lamina"
    f.save(str(path))
    with zipfile.ZipFile(path) as zf:
        doc = __import__("json").loads(zf.read("variant0.kernels.json"))
    assert doc["targets"] == ["sm_80", "sm_90"]
    for entry in doc["kernels"]:
        for bins in entry["binaries"].values():
            got = {b["target"]: KernelBinary.from_json(b) for b in bins}
            assert set(got) == {"sm_80", "sm_90"}
            for t, b in got.items():
                assert b.cubin[:4] == b"\x7fELF" and f".target {t}" in b.ptx
    # the same file in a fresh process (the interpreter here; the CUDA runtime on a GPU)
    code = ("import sys, numpy as np, lamina as lm; f = lm.load(sys.argv[1]); "
            "x = np.load(sys.argv[2]); w = np.load(sys.argv[3]); np.save(sys.argv[4], f(x, w))")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    env = dict(os.environ, LAMINA_TRITON_MODE="interpret")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "w.npy"), str(tmp_path / "y.npy")], check=True, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_artifact_for_other_gpu_is_a_clear_error():
    from lamina.backends.triton.triton_backend import _launches
    from lamina.ir.errors import ArtifactError

    x = np.ones((4, 4), np.float32)
    (src,) = _sources_of(lambda x: x * 2.0, x)
    binary = aot.compile_source(src, "sm_80")
    with pytest.raises(ArtifactError, match="compiled for sm_80; this GPU is sm_90"):
        _launches([(None, src)], {src.name: [binary]}, "sm_90")


def test_targets_come_from_the_environment(monkeypatch):
    from lamina.backends.triton.triton_backend import targets
    from lamina.ir.errors import LaminaError

    monkeypatch.setenv("LAMINA_TRITON_TARGETS", "sm_90, sm_100")
    assert targets() == ("sm_90", "sm_100")
    monkeypatch.setenv("LAMINA_TRITON_TARGETS", "hopper")
    with pytest.raises(LaminaError, match="unknown GPU target 'hopper'"):
        targets()


def test_render_sizes_are_static():
    x = np.ones((3, 1000), np.float32)
    (src,) = _sources_of(lambda x: lm.exp(x) + 1.0, x)
    assert src.grid == (math.ceil(3000 / 1024), 1, 1)
    assert set(src.signature) == {"a0", "out"}


@needs_torch
def test_transpose_of_square_matmul_is_not_fused_into_its_epilogue():
    """Regression: a GEMM tile knows only its own elements, so ``(a @ b).T + a`` (square) must
    not read the matmul through the transpose inside one kernel. (Without simplify: its
    transpose_of_matmul computes b.T @ a.T instead, and no transpose is left to read.)"""
    from lamina.passes import DEFAULT, simplify

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 16, 16)).astype(np.float32)
    for backend in ("triton", "llvm"):
        f = lm.compile(lambda a, b: (a @ b).T + a, backend=backend,
                       passes=[p for p in DEFAULT if p is not simplify])
        np.testing.assert_allclose(f(a, b), (a @ b).T + a, rtol=2e-5, atol=2e-5)
        remarks = [r for s in f._variant().stages for r in s.remarks]
        assert any("epilogue reads it through a transpose" in r for r in remarks), remarks


def test_gpu_benchmark_workloads_compile_for_sm90():
    """The kernels of benchmarks/gpu.py at full size (large tiles, 64M elements, long rows)."""
    from lamina import nn, optim

    x = lm.TensorType((32768, 4096), lm.float32)
    gamma = lm.TensorType((4096,), lm.float32)

    def layernorm(x, g):
        m = x.mean(axis=1, keepdims=True)
        v = ((x - m) ** 2).mean(axis=1, keepdims=True)
        return (x - m) * lm.rsqrt(v + 1e-5) * g

    mm = lm.TensorType((4096, 4096), lm.float32)
    cases = [
        (lambda x: lm.gelu(x * 1.5 + 0.5, approximate="tanh"),
         [lm.TensorType((1 << 26,), lm.float32)]),
        (lambda x: lm.softmax(x), [x]),
        (layernorm, [x, gamma]),
        (lambda a, b: a @ b, [mm, mm]),
        (lambda a, b: lm.astype(a, lm.bfloat16) @ lm.astype(b, lm.bfloat16), [mm, mm]),
    ]
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    opt = optim.SGD(model.parameters(), lr=0.01)

    def step(xb, yb):
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.minimize(loss)
        return loss

    cases.append((step, [lm.TensorType((4096, 784), lm.float32),
                         lm.TensorType((4096,), lm.int32)]))
    lstm = nn.LSTM(64, 128)  # lstm_train: the host loop's step kernels too
    lstm_opt = optim.SGD(lstm.parameters(), lr=0.1)

    def lstm_step(x):
        _, (h, _) = lstm(x)
        loss = (h[-1] * h[-1]).mean()
        lstm_opt.minimize(loss)
        return loss

    cases.append((lstm_step, [lm.TensorType((50, 32, 64), lm.float32)]))
    kinds = set()
    for fn, types in cases:
        sources = _sources_of(fn, *types)
        if fn is lstm_step:  # the forward and backward steps' kernels are among them
            assert sum(s.kind == "gemm" for s in sources) >= 5
        for src in sources:
            for s in [*src.prologue, src]:
                kinds.add(s.kind)
                _check_binary(aot.compile_source(s, "sm_90"), s)
    assert {"loop", "row", "gemm"} <= kinds


def _matmul_kernel(shape_a, shape_b):
    from lamina.passes.fuse import fuse_kernels

    exe = lm.compile(lambda a, b: lm.relu(a @ b), backend="numpy").lower(
        lm.TensorType(shape_a, lm.float32), lm.TensorType(shape_b, lm.float32))
    graph = fuse_kernels(exe.graph)
    (node,) = [n for n in graph.nodes if n.op == "kernel"]
    return node


def test_every_gemm_tile_candidate_compiles_for_sm90():
    from lamina.backends.triton.codegen import gemm_candidates
    from lamina.ir import dtypes as dt

    node = _matmul_kernel((4096, 4096), (4096, 4096))
    candidates = gemm_candidates(4096, 4096, 4096, dt.float32)
    assert len(candidates) > 1
    for c in candidates:
        src = render(node, "mm", gemm=c)
        assert f"tl.arange(0, {c[0]})" in src.source and src.num_warps == c[3]
        _check_binary(aot.compile_source(src, "sm_90"), src)


def test_autotune_keeps_the_fastest_config_and_caches_it(monkeypatch, tmp_path):
    from lamina.backends.triton import autotune
    from lamina.backends.triton.codegen import gemm_candidates
    from lamina.ir import dtypes as dt

    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path))
    node = _matmul_kernel((2048, 1024), (1024, 512))
    candidates = gemm_candidates(2048, 512, 1024, dt.float32)
    fastest = candidates[2]
    timed = []

    def fake_time(n, src, binary):  # stands in for CUDA events on a GPU
        tile = next(c for c in candidates if render(n, "mm", gemm=c).source == src.source)
        timed.append(tile)
        return 1.0 if tile != fastest else 0.5

    monkeypatch.setattr(autotune, "time_kernel", fake_time)
    assert autotune.choose(node, "mm", {}, False, "sm_90") == fastest
    assert sorted(timed) == sorted(candidates)
    timed.clear()
    assert autotune.choose(node, "mm", {}, False, "sm_90") == fastest  # from the disk cache
    assert timed == []
    small = _matmul_kernel((64, 64), (64, 64))  # too small to be worth timing
    assert autotune.choose(small, "mm", {}, False, "sm_90") == gemm_candidates(
        64, 64, 64, dt.float32)[0] and timed == []


@needs_torch
def test_dump_holds_memory_plan_and_every_kernel_source(tmp_path, monkeypatch):
    from lamina.ir import config

    monkeypatch.setattr(config, "dump", str(tmp_path / "dump"))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 12)).astype(np.float32)
    w = rng.standard_normal((12, 5)).astype(np.float32)
    f = lm.compile(lambda x, w: lm.softmax(lm.tanh(x) @ w), backend="triton")
    e = np.exp(np.tanh(x) @ w)
    np.testing.assert_allclose(f(x, w), e / e.sum(1, keepdims=True), rtol=2e-5, atol=2e-6)
    (folder,) = os.listdir(tmp_path / "dump")
    names = sorted(os.listdir(tmp_path / "dump" / folder))
    plan = [n for n in names if n.endswith("memory_plan.txt")]
    kernels = [n for n in names if "_triton_" in n and n.endswith(".py")]
    assert plan and "peak" in (tmp_path / "dump" / folder / plan[0]).read_text()
    assert len(kernels) == 3, names  # tanh; matmul; softmax
    for k in kernels:
        text = (tmp_path / "dump" / folder / k).read_text()
        assert text.startswith("# lamina kernel @") and "@triton.jit" in text
