"""The LLVM CPU backend end to end (backends/llvm): the on-disk compile cache (a warm start in a
fresh process runs no LLVM optimization or code emission; a miss says why), artifacts that load
in a fresh process and run their saved object code, target checks on load, the LAMINA_DUMP of
the MLP training step (fused kernels, boundaries, memory plan, LLVM IR before and after O3),
identical results with 1 and 2 threads, index errors, in-place state updates, and random fused
graphs against the reference interpreter.

Fresh processes run ``WORKER`` (``python -c``, so source locations in the IR, part of the cache
key, are the same in every run) with a JSON job; they write their arrays to ``<out>.npz`` and
their counters to ``<out>.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import assert_close
from test_fuse import random_graph

import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm import jit
from lamina.backends.llvm.llvm_backend import backend as llvm_backend
from lamina.ir import interpret, parse
from lamina.passes.fuse import fuse_kernels
from lamina.runtime import cache as cache_mod

WORKER = r'''
import json, os, sys
import numpy as np
job = json.load(open(sys.argv[1]))
import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm import jit, llvm_backend

arrays, result = {}, {}
rng = np.random.default_rng(1234)
X = rng.standard_normal((64, 784)).astype(np.float32)
Y = rng.integers(0, 10, 64).astype(np.int64)


def model(sizes=(784, 512, 512, 10)):
    lm.random.seed(7)
    return [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]


def forward(layers, x):
    for layer in layers[:-1]:
        x = lm.relu(layer(x))
    return layers[-1](x)


def train_step(layers):
    opt = optim.SGD([p for l in layers for p in (l.w, l.b)], lr=0.05)

    def step(x, y):
        loss = nn.functional.cross_entropy(forward(layers, x), y)
        opt.minimize(loss)
        return loss

    return lm.compile(step, backend="llvm", name="mlp_step")


for task in job["tasks"]:
    if task in ("warm", "changed"):
        scale = 2.0 if task == "warm" else 3.0
        f = lm.compile(lambda x, w: lm.softmax(lm.tanh(x @ w) * scale, axis=-1),
                       backend="llvm", name="warm")
        x, w = X[:16, :32], X[16:48, :24].copy()
        exe = f.lower(x, w)
        result[task + "_cache"] = exe.program.compile_info["cache"]
        result[task + "_stats"] = dict(jit.STATS)
        arrays[task] = f(x, w)
    elif task == "save":
        layers = model()
        fwd = lm.compile(lambda x: forward(layers, x), backend="llvm", name="mlp_forward")
        step = train_step(layers)
        fwd.lower(X)
        exe = step.lower(X, Y)
        fwd.save(job["forward"])
        step.save(job["step"])
        arrays["forward"] = fwd(X)
        arrays["loss1"], arrays["loss2"] = step(X, Y), step(X, Y)
        for k, v in exe.state_dict().items():
            arrays["param." + k] = v
    elif task == "load":
        fwd, step = lm.load(job["forward"]), lm.load(job["step"])
        result["load_stats"] = dict(jit.STATS)
        arrays["forward"] = fwd(X)
        arrays["loss1"], arrays["loss2"] = step(X, Y), step(X, Y)
        for k, v in step.state_dict().items():
            arrays["param." + k] = v
        result["backend_stats"] = dict(llvm_backend.STATS)
    elif task == "threads":
        r = np.random.default_rng(5)
        a = r.standard_normal((256, 512)).astype(np.float32)
        g, b = r.standard_normal(512).astype(np.float32), r.standard_normal(512).astype(np.float32)

        def layernorm(x, g, b):
            mu = x.mean(axis=-1, keepdims=True)
            var = ((x - mu) * (x - mu)).mean(axis=-1, keepdims=True)
            return (x - mu) * lm.rsqrt(var + 1e-5) * g + b

        arrays["softmax"] = lm.compile(lambda x: lm.softmax(x, axis=-1), backend="llvm")(a)
        arrays["layernorm"] = lm.compile(layernorm, backend="llvm")(a, g, b)
        m = r.standard_normal((512, 384)).astype(np.float32)
        arrays["matmul"] = lm.compile(lambda p, q: p @ q, backend="llvm")(a, m)
        arrays["column_sum"] = lm.compile(lambda x: x - x.sum(axis=0, keepdims=True),
                                          backend="llvm")(a)
        layers = model()
        step = train_step(layers)
        arrays["loss1"], arrays["loss2"] = step(X, Y), step(X, Y)
        for k, v in step.lower(X, Y).state_dict().items():
            arrays["param." + k] = v
    elif task == "dump":
        layers = model()
        step = train_step(layers)
        arrays["loss"] = step(X, Y)
        result["stages"] = step.stages()
    else:
        raise SystemExit(f"unknown task {task}")

result["stats"] = dict(jit.STATS)
result["threads"] = jit.threads()
np.savez(job["out"] + ".npz", **{k: np.asarray(v) for k, v in arrays.items()})
with open(job["out"] + ".json", "w") as fh:
    json.dump(result, fh)
'''


class Run:
    def __init__(self, result: dict, arrays: dict, stderr: str):
        self.result, self.arrays, self.stderr = result, arrays, stderr

    @property
    def stats(self) -> dict:
        return self.result["stats"]


def run_worker(tmp, name: str, tasks: list[str], env: dict | None = None, **paths) -> Run:
    """Run WORKER in a fresh interpreter; its environment is this one's plus ``env`` (a None
    value removes a variable)."""
    out = str(tmp / name)
    job = {"tasks": tasks, "out": out, **{k: str(v) for k, v in paths.items()}}
    job_file = tmp / f"{name}.job.json"
    job_file.write_text(json.dumps(job))
    full = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    p = subprocess.run([sys.executable, "-c", WORKER, str(job_file)], check=False,
                       env=full, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"worker {name} failed ({p.returncode}):\n{p.stderr[-4000:]}"
    with np.load(out + ".npz") as z:
        arrays = {k: z[k] for k in z.files}
    with open(out + ".json") as fh:
        result = json.load(fh)
    return Run(result, arrays, p.stderr)


def assert_same_arrays(a: dict, b: dict, keys=None):
    keys = sorted(a) if keys is None else keys
    assert keys and set(keys) <= set(b), (sorted(a), sorted(b))
    for k in keys:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --- the compile cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_runs(tmp_path_factory):
    """A cold process and then a warm one over the same fresh cache directory."""
    tmp = tmp_path_factory.mktemp("cache")
    env = {"LAMINA_CACHE_DIR": str(tmp / "cache"), "LAMINA_CACHE": None}
    cold = run_worker(tmp, "cold", ["warm"], env)
    warm = run_worker(tmp, "warm", ["warm", "changed"], {**env, "LAMINA_DEBUG": "1"})
    return tmp / "cache", cold, warm


def test_cold_process_compiles_and_fills_the_cache(cache_runs):
    _, cold, _ = cache_runs
    assert cold.result["warm_cache"].startswith("miss (nothing cached for @warm yet")
    assert cold.stats["optimize"] >= 1 and cold.stats["emit_object"] >= 1


def test_warm_process_runs_no_llvm(cache_runs):
    _, cold, warm = cache_runs
    assert warm.result["warm_cache"] == "hit"
    assert warm.result["warm_stats"] == {"optimize": 0, "emit_object": 0}
    assert_same_arrays(cold.arrays, warm.arrays, ["warm"])


def test_cache_miss_says_the_ir_changed(cache_runs):
    _, _, warm = cache_runs
    assert warm.result["changed_cache"] == "miss (the IR changed)"
    assert "lamina: cache miss for @warm: the IR changed" in warm.stderr
    assert warm.result["changed_stats"]["optimize"] == 1
    assert not np.array_equal(warm.arrays["warm"], warm.arrays["changed"])


def test_cache_directory_holds_only_complete_entries(cache_runs):
    directory, _, _ = cache_runs
    names = sorted(os.listdir(directory))
    assert "index.json" in names
    objects = [n for n in names if n.endswith(".o")]
    assert len(objects) >= 3  # the GEMM library and both versions of @warm
    for n in names:  # atomic writes leave no temporary files behind
        assert re.fullmatch(r"[0-9a-f]{32}\.(o|json)|index\.json", n), n
    for o in objects:
        meta = json.loads((directory / (o[:-2] + ".json")).read_text())
        assert meta["sha256"] == hashlib.sha256((directory / o).read_bytes()).hexdigest()
    index = json.loads((directory / "index.json").read_text())
    assert "warm" in index and any(k.startswith("lamina_gemm_") for k in index)


def test_cache_miss_names_the_part_of_the_key_that_changed(tmp_path):
    c = cache_mod.Cache(str(tmp_path))
    versions = {"lamina": "0.1.0", "codegen": "1", "llvm": "22", "llvmlite": "0.50"}
    parts = cache_mod.key_parts("graph @g() {}", "graph", versions, "x86|cpu|+avx2")
    assert c.get("g", parts) is None and c.last_miss == "nothing cached for @g yet"
    c.put("g", parts, b"object code")
    assert c.get("g", parts) == b"object code"
    cases = {
        "the IR changed": cache_mod.key_parts("graph @g(%x: f32[]) {}", "graph", versions,
                                              "x86|cpu|+avx2"),
        "the CPU (name or features) changed": cache_mod.key_parts(
            "graph @g() {}", "graph", versions, "x86|cpu|+avx512f"),
        "the code generator changed": cache_mod.key_parts(
            "graph @g() {}", "graph", {**versions, "codegen": "2"}, "x86|cpu|+avx2"),
        "LLVM's version changed": cache_mod.key_parts(
            "graph @g() {}", "graph", {**versions, "llvm": "23"}, "x86|cpu|+avx2"),
    }
    for why, changed in cases.items():
        assert c.get("g", changed) is None
        assert c.last_miss == why
    # a damaged object is a miss, not a crash
    key = cache_mod.key_of(parts)
    (tmp_path / f"{key}.o").write_bytes(b"object cod3")
    assert c.get("g", parts) is None and "checksum" in c.last_miss


# --- artifacts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifacts")
    paths = {"forward": tmp / "forward.lam", "step": tmp / "step.lam"}
    saved = run_worker(tmp, "save", ["save"], **paths)
    # the loading process has no compile cache at all: everything comes from the artifacts
    loaded = run_worker(tmp, "load", ["load"], {"LAMINA_CACHE": "0"}, **paths)
    return saved, loaded, paths


def test_artifacts_load_in_a_fresh_process_without_llvm(artifact_runs):
    _, loaded, _ = artifact_runs
    assert loaded.result["load_stats"] == {"optimize": 0, "emit_object": 0}
    assert loaded.stats == {"optimize": 0, "emit_object": 0}
    assert loaded.result["backend_stats"]["loaded"] == 2
    assert loaded.result["backend_stats"]["compiled"] == 0


def test_loaded_mlp_forward_and_train_step_match_bit_for_bit(artifact_runs):
    saved, loaded, _ = artifact_runs
    keys = sorted(saved.arrays)
    assert "forward" in keys and "loss2" in keys
    assert {k for k in keys if k.startswith("param.")} == {
        f"param.{n}" for n in ("w", "b", "w_1", "b_1", "w_2", "b_2", "sgd.lr")}
    assert_same_arrays(saved.arrays, loaded.arrays, keys)
    # two steps trained something
    assert saved.arrays["loss2"] < saved.arrays["loss1"]


def _rewrite_member(src, dst, member: str, edit):
    """Copy artifact ``src`` to ``dst`` with ``member`` replaced by ``edit(old bytes)`` and
    its checksum in manifest.json fixed, so only the content check can object."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = edit(members[member])
    manifest = json.loads(members["manifest.json"])
    manifest["checksums"][member] = hashlib.sha256(members[member]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    dst.write_bytes(buf.getvalue())


def _edit_target(**changes):
    def edit(raw: bytes) -> bytes:
        return json.dumps({**json.loads(raw), **changes}).encode()

    return edit


def test_artifact_for_another_cpu_is_a_clear_error(artifact_runs, tmp_path):
    _, _, paths = artifact_runs
    bad = tmp_path / "other_cpu.lam"
    _rewrite_member(paths["forward"], bad, "variant0.target.json",
                    _edit_target(cpu="bogus9000", host="x86_64-unknown-linux-gnu|bogus9000|+sse2"))
    with pytest.raises(lm.ArtifactError) as e:
        lm.load(str(bad))
    msg = str(e.value)
    assert "bogus9000" in msg and "CPU" in msg and jit.host().cpu in msg


def test_artifact_from_another_code_generator_is_a_clear_error(artifact_runs, tmp_path):
    _, _, paths = artifact_runs
    bad = tmp_path / "old_codegen.lam"
    _rewrite_member(paths["step"], bad, "variant0.target.json", _edit_target(codegen="0"))
    with pytest.raises(lm.ArtifactError, match="recompile"):
        lm.load(str(bad))


def test_artifact_without_object_code_is_a_clear_error(artifact_runs, tmp_path):
    _, _, paths = artifact_runs
    bad = tmp_path / "no_object.lam"
    _rewrite_member(paths["forward"], bad, "variant0.target.json", lambda raw: b"not json")
    with pytest.raises(lm.ArtifactError, match="object code"):
        lm.load(str(bad))


# --- the dump of the MLP training step ----------------------------------------------------------


@pytest.fixture(scope="module")
def dump_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dump")
    run = run_worker(tmp, "dump", ["dump"], {"LAMINA_DUMP": str(tmp / "dump")})
    assert "fused" in run.result["stages"]
    (folder,) = os.listdir(tmp / "dump")
    assert folder == "mlp_step.0"
    return tmp / "dump" / folder


def _dumped(folder, suffix: str):
    found = sorted(n for n in os.listdir(folder) if n.endswith(suffix))
    assert len(found) == 1, (suffix, sorted(os.listdir(folder)))
    name = found[0]
    return int(name[:2]), (folder / name).read_text()


def test_dump_shows_fused_kernels_and_boundaries(dump_dir):
    k, text = _dumped(dump_dir, "_fused.lir")
    assert re.search(r"^  %\d+ = kernel @fused_matmul", text, re.MULTILINE)
    assert "kernel @fused_matmul_add_relu(" in text
    remarks = [line for line in text.splitlines() if line.startswith("# remark: ")]
    assert any(r.startswith("# remark: boundary") for r in remarks)
    for name in re.findall(r"= kernel @(\w+)\(", text):
        assert any(r.startswith(f"# remark: @{name}: ") for r in remarks), name
    # the stages before fusion are dumped too, in order
    _, before = _dumped(dump_dir, "_dce.lir")
    assert "kernel @" not in before
    assert k == len([n for n in os.listdir(dump_dir) if n.endswith(".lir")]) - 1


def test_dump_has_the_memory_plan_with_peak_bytes(dump_dir):
    k_fused, _ = _dumped(dump_dir, "_fused.lir")
    k, text = _dumped(dump_dir, "_memory_plan.txt")
    assert k == k_fused + 1
    m = re.match(r"# memory plan: arena (\d+) bytes, outputs (\d+) bytes, predicted peak (\d+) "
                 r"bytes", text)
    assert m and int(m[3]) == int(m[1]) + int(m[2]) and int(m[2]) == 4
    assert "in place: %w is updated where it lives" in text


def test_dump_has_llvm_ir_before_and_after_optimization(dump_dir):
    k_plan, _ = _dumped(dump_dir, "_memory_plan.txt")
    k_pre, pre = _dumped(dump_dir, "_llvm_pre_opt.ll")
    k_opt, opt = _dumped(dump_dir, "_llvm_opt.ll")
    assert (k_pre, k_opt) == (k_plan + 1, k_plan + 2)
    for text in (pre, opt):
        assert re.search(r'^define .*i32 @"?lamina_entry"?\(', text, re.MULTILINE)
    assert re.search(r"<(8|16) x float>", opt)
    assert pre != opt


# --- threads ------------------------------------------------------------------------------------


def test_one_and_two_threads_give_identical_results(tmp_path):
    one = run_worker(tmp_path, "t1", ["threads"], {"LAMINA_NUM_THREADS": "1"})
    two = run_worker(tmp_path, "t2", ["threads"], {"LAMINA_NUM_THREADS": "2"})
    assert (one.result["threads"], two.result["threads"]) == (1, 2)
    keys = sorted(one.arrays)
    for k in ("softmax", "layernorm", "matmul", "column_sum", "loss1", "loss2", "param.w"):
        assert k in keys
    assert_same_arrays(one.arrays, two.arrays, keys)


# --- in this process ----------------------------------------------------------------------------


def test_llvm_compile_records_the_fused_stage():
    f = lm.compile(lambda x: lm.softmax(x, axis=-1), backend="llvm")
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    got = f(x)
    assert f.stages()[-1] == "fused"
    text = f.ir("fused")
    name = re.search(r"= kernel @(fused_max_sub_exp_sum\w*)\(%x\) : f32\[8,16\] \{", text)
    assert name, text
    assert f"# remark: @{name[1]}: reduce over axes [1]" in text
    want = np.exp(x - x.max(1, keepdims=True))
    assert_close(got, want / want.sum(1, keepdims=True))


def _layernorm_one_pass(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = (x * x).mean(-1, keepdims=True) - m * m   # both means in one sweep over the row
    return (x - m) * lm.rsqrt(v + 1e-5) * g + b


def _ref_layernorm_one_pass(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = (x * x).mean(-1, keepdims=True) - m * m
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def _ref_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7, 700), (3, 5, 260), (2, 100)])
def test_row_kernels_over_long_rows(dtype, shape, tmp_path, monkeypatch):
    """Rows long enough (>= 512 bytes) that row kernels prefetch the next row after their
    first sweep (the last row prefetches past its buffer, which must be harmless), with
    independent reductions sharing a sweep (layernorm's two means) and softmax's exp stored
    on the way and read back: every row against numpy."""
    from lamina.ir import config
    monkeypatch.setattr(config, "dump", str(tmp_path / "dump"))
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g, b = (rng.standard_normal(shape[-1:]).astype(dtype) for _ in range(2))
    sm = lm.compile(lambda v: lm.softmax(v, axis=-1), backend="llvm")
    ln = lm.compile(_layernorm_one_pass, backend="llvm")
    assert_close(sm(x), _ref_softmax(x.astype(np.float64)).astype(dtype))
    want = _ref_layernorm_one_pass(*(a.astype(np.float64) for a in (x, g, b)))
    assert_close(ln(x, g, b), want.astype(dtype), rtol=1e-4 if dtype == "float32" else None)
    row_bytes = shape[-1] * np.dtype(dtype).itemsize
    for folder in os.listdir(tmp_path / "dump"):
        (ll,) = [n for n in os.listdir(tmp_path / "dump" / folder) if n.endswith("pre_opt.ll")]
        text = (tmp_path / "dump" / folder / ll).read_text()
        assert ("llvm.prefetch" in text) == (row_bytes >= 512), (folder, row_bytes)


def test_take_out_of_range_is_an_error():
    f = lm.compile(lambda x, i: lm.take(x, i, axis=0) * 2, backend="llvm")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(f(x, np.array([0, 3, -1])), x[[0, 3, -1]] * 2)
    for bad in ([0, 4, 1], [0, -5, 1], [2**40, 0, 0]):
        with pytest.raises(lm.LaminaError, match="out of range"):
            f(x, np.array(bad))
    # the next call is fine again
    np.testing.assert_array_equal(f(x, np.array([1, 2, 3])), x[[1, 2, 3]] * 2)


def test_take_out_of_range_in_a_train_step_leaves_the_parameters_alone():
    """The numpy backend raises before any update; a step that fails must not leave
    parameters half-updated from clamped indices."""
    emb = nn.Parameter(np.arange(12, dtype=np.float32).reshape(4, 3), "emb")
    opt = optim.SGD([emb], lr=0.5)

    def step(i):
        loss = (lm.take(emb, i, axis=0) ** 2).sum()
        opt.minimize(loss)
        return loss

    f = lm.compile(step, backend="llvm")
    before = emb.numpy()
    with pytest.raises(lm.LaminaError, match="out of range"):
        f(np.array([0, 9]))
    np.testing.assert_array_equal(emb.numpy(), before)


TRANSPOSED_UPDATE = """graph @tr_update(%x: f32[]) state(%w: f32[4,4]) {
  %0 = mul(%w, %x) : f32[4,4]
  %1 = transpose(%0) {perm=[1, 0]} : f32[4,4]
  update %w = %1
  return %x
}
"""


def test_state_update_reading_other_positions_is_correct():
    g = fuse_kernels(parse(TRANSPOSED_UPDATE))
    program = llvm_backend.compile(g)
    w0 = np.arange(16, dtype=np.float32).reshape(4, 4)
    x = np.asarray(np.float32(2))
    _, want = interpret(g, [x], {"w": w0})
    state = {"w": w0.copy()}
    program([x], state)
    np.testing.assert_array_equal(state["w"], want["w"])  # (2 w).T


STATE_CASES = {
    "swap": """graph @swap(%x: f32[4]) state(%a: f32[4], %b: f32[4]) {
  %0 = mul(%b, %x) : f32[4]
  %1 = add(%a, %x) : f32[4]
  update %a = %0
  update %b = %1
  return %x
}
""",
    "swap_params": """graph @swap_params(%x: f32[4]) state(%a: f32[4], %b: f32[4]) {
  update %a = %b
  update %b = %a
  return %x
}
""",
    "old_and_new_value_out": """graph @old_new(%x: f32[4]) state(%a: f32[4]) {
  %0 = add(%a, %x) : f32[4]
  update %a = %0
  return %a, %0, %0
}
""",
    "literal": """graph @literal(%x: f32[4]) state(%a: f32[4]) {
  %0 = constant() {value=[1.0, 2.0, 3.0, 4.0]} : f32[4]
  update %a = %0
  return %x
}
""",
    "one_value_two_states": """graph @two_states(%x: f32[4]) state(%a: f32[4], %b: f32[4]) {
  %0 = add(%a, %x) : f32[4]
  update %a = %0
  update %b = %0
  return %b
}
""",
    "read_after_update": """graph @late(%x: f32[4]) state(%w: f32[4]) {
  %0 = mul(%w, %x) : f32[4]
  %1 = sum(%w) {axis=[0], keepdims=false} : f32[]
  update %w = %0
  return %1
}
""",
}


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_state_updates_and_outputs_match_the_interpreter(case):
    g = fuse_kernels(parse(STATE_CASES[case]))
    x = np.arange(4, dtype=np.float32) + 1
    state0 = {p.name: np.arange(4, dtype=np.float32) * (i + 2) for i, p in enumerate(g.state)}
    want_out, want_up = interpret(g, [x], state0)
    state = {k: v.copy() for k, v in state0.items()}
    outs, _ = llvm_backend.compile(g)([x], state)
    for a, b in zip(outs, want_out):
        np.testing.assert_array_equal(a, b)
    for k, v in want_up.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    for i, a in enumerate(outs):  # outputs are fresh arrays, not views of the state
        assert not any(np.shares_memory(a, v) for v in state.values()), i


def test_train_step_matches_the_reference_backend():
    def build(backend):
        lm.random.seed(3)
        layers = [nn.Linear(20, 16), nn.Linear(16, 5)]
        opt = optim.Adam([p for layer in layers for p in (layer.w, layer.b)], lr=0.01)

        def step(x, y):
            h = lm.relu(layers[0](x))
            loss = nn.functional.cross_entropy(layers[1](h), y)
            opt.minimize(loss)
            return loss

        return lm.compile(step, backend=backend), layers

    r = np.random.default_rng(2)
    x, y = r.standard_normal((8, 20)).astype(np.float32), r.integers(0, 5, 8)
    (f, la), (g, lb) = build("llvm"), build("numpy")
    for _ in range(3):
        assert_close(f(x, y), g(x, y), rtol=1e-5, atol=1e-6)
    for a, b in zip(la, lb):
        assert_close(a.w.numpy(), b.w.numpy(), rtol=1e-5, atol=1e-6)
        assert_close(a.b.numpy(), b.b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", range(2))
def test_random_fused_graphs_match_the_interpreter(chunk):
    for seed in range(chunk * 16, chunk * 16 + 16):
        g = fuse_kernels(random_graph(seed, with_state=seed % 2 == 1))
        r = np.random.default_rng(seed)
        inputs = [r.standard_normal(p.type.shape).astype(np.float32) for p in g.inputs]
        state0 = {p.name: r.standard_normal(p.type.shape).astype(np.float32) for p in g.state}
        want_out, want_up = interpret(g, inputs, state0)
        state = {k: v.copy() for k, v in state0.items()}
        outs, updates = llvm_backend.compile(g)(inputs, state)
        assert updates == {}  # updated in place, inside the call
        for k, (a, b) in enumerate(zip(outs, want_out)):
            assert_close(a, b, err_msg=f"seed {seed}, output {k}")
        for name, v in want_up.items():
            assert_close(state[name], v, err_msg=f"seed {seed}, state {name}")


def test_profile_table_names_every_kernel_and_leaves_the_state_alone():
    w = nn.Parameter(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "w")
    opt = optim.SGD([w], lr=0.5)

    @lm.compile(backend="llvm")
    def step(x):
        loss = lm.softmax(x @ w).sum()
        opt.minimize(loss)
        return loss

    x = np.ones((2, 3), np.float32)
    before = w.numpy()
    table = step.profile(x, repeat=5)
    assert np.array_equal(w.numpy(), before)  # the profiled run used copies of the state
    for k in step._last.graph.nodes:
        if k.op == "kernel":
            assert f"@{k.attrs['name']}"[:42] in table
    assert "total per call" in table and "gemm" in table


def test_profile_needs_the_llvm_backend():
    f = lm.compile(lambda x: x + 1.0, backend="numpy")
    with pytest.raises(lm.LaminaError, match="llvm"):
        f.profile(np.ones(3, np.float32))


def test_programs_load_only_the_gemm_entries_they_call(tmp_path):
    """The GEMM's entries are separate objects, loaded for the programs whose code calls them
    (kernels.o's imports): a matmul needs the plain entry, a convolution the gather entry
    (its patches read through offset tables), and an artifact carries just those."""
    import zipfile

    from lamina.backends.llvm import llvm_backend

    lin = lm.compile(lambda x, w: x @ w, backend="llvm")
    x, w = np.ones((4, 8), np.float32), np.ones((8, 3), np.float32)
    np.testing.assert_array_equal(lin(x, w), x @ w)
    conv = lm.compile(lambda x, w: lm.nn.functional.conv2d(x, w), backend="llvm")
    xc = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6) / 100
    wc = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3) / 100
    conv(xc, wc)
    for f, want in ((lin, {"gemm.f32.o"}), (conv, {"gemm_gather.f32.o"})):
        f.save(tmp_path / "p.lamina")
        with zipfile.ZipFile(tmp_path / "p.lamina") as z:
            names = {n.split(".", 1)[1] for n in z.namelist() if ".gemm" in n}
        assert names == want, names
    assert llvm_backend.gemm_library.cache_info().currsize >= 2
