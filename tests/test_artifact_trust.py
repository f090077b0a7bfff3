"""Artifacts and compile-cache entries are untrusted input: damaged or mismatched members are an
``ArtifactError`` naming the member, never a crash, a hang or wrong numbers.

Every corruption below recomputes the sha256 sums in manifest.json, so the checksums cannot
catch it: only the structural checks (ELF structure of object code, the IR bound to its code,
signature, output structure and state types checked against the IR) can. Loads run in a
subprocess, several per process to keep the file fast; the runner prints each case's name
before loading it, so a crash is attributed to its case.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import lamina as lm
from lamina import nn
from lamina.backends import objcheck
from lamina.runtime import cache as cache_mod

F32 = np.float32

# Loads each case of a JSON list [{name, path, shape, want}] and calls it once; prints one JSON
# line per case. A crash (a signal) ends the process: the last "start" line names the case.
_RUNNER = r"""
import json, sys
import numpy as np
import lamina as lm

for case in json.load(open(sys.argv[1])):
    print(json.dumps({"start": case["name"]}), flush=True)
    x = np.linspace(-1, 1, int(np.prod(case["shape"])), dtype=np.float32).reshape(case["shape"])
    try:
        out = lm.load(case["path"])(x)
        r = {"loaded": True, "out": np.asarray(out).tolist()}
    except lm.ArtifactError as e:
        r = {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - what escapes is what the test reports
        r = {"other": f"{type(e).__name__}: {e}"}
    print(json.dumps({"case": case["name"], **r}), flush=True)
"""


def _run_cases(tmp_path, cases: list[dict], timeout: float = 240) -> dict[str, dict]:
    """Run the cases in one subprocess: {case name: result}; fails on a crash, naming it."""
    spec = tmp_path / f"cases_{len(os.listdir(tmp_path))}.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)
    results, started = {}, None
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if "start" in msg:
            started = msg["start"]
        else:
            results[msg["case"]] = msg
    assert proc.returncode == 0, (f"the loader crashed (exit {proc.returncode}) on case "
                                  f"{started!r}:\n{proc.stderr[-3000:]}")
    assert set(results) == {c["name"] for c in cases}, proc.stderr[-3000:]
    return results


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path, members: dict[str, bytes], manifest: dict | None = None) -> None:
    """An artifact of ``members`` whose manifest has recomputed checksums."""
    members = dict(members)
    manifest = dict(manifest or json.loads(members["manifest.json"]))
    manifest["checksums"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()
                             if n != "manifest.json"}
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _check_errors(results: dict[str, dict], expected: dict[str, tuple[str, ...]]) -> None:
    bad = []
    for name, want in expected.items():
        r = results[name]
        if "error" not in r:
            bad.append(f"{name}: no ArtifactError: {r}")
        elif not all(w in r["error"] for w in want):
            bad.append(f"{name}: the error does not name {want}: {r['error']}")
    assert not bad, "\n".join(bad)


# --- the llvm artifact ------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        self.fc1, self.fc2 = nn.Linear(7, 12), nn.Linear(12, 3)

    def __call__(self, x):
        return self.fc2(lm.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def llvm_artifact(tmp_path_factory):
    """(path, members, {batch: expected output}) of an MLP forward with two variants (batch 5
    and 9), each with its kernels.o and f32 GEMM object."""
    tmp = tmp_path_factory.mktemp("llvm_artifact")
    lm.random.seed(0)
    model = MLP()
    f = lm.compile(lambda x: model(x), backend="llvm")
    want = {}
    for batch in (5, 9):
        x = np.linspace(-1, 1, batch * 7, dtype=F32).reshape(batch, 7)
        want[batch] = f(x)
    path = tmp / "mlp.lamina"
    f.save(path)
    members = _members(path)
    assert {"variant0.kernels.o", "variant0.gemm.f32.o", "variant0.pool.o",
            "variant1.lir"} <= set(members)
    return path, members, want


def _elf(data: bytes) -> objcheck.ElfObject:
    return objcheck.check_object(data, "test", machine=objcheck.host_machine())


def _symtab_entry(data: bytes, name: str) -> int:
    """The file offset of symbol ``name``'s entry in the symbol table."""
    obj = _elf(data)
    symtab = next(s for s in obj.sections if s.type == objcheck.SHT_SYMTAB)
    k = next(i for i, s in enumerate(obj.symbols) if s.name == name)
    return symtab.offset + 24 * k


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def _object_corruptions(data: bytes, entry_symbol: str) -> dict[str, tuple[bytes, str]]:
    """Damaged copies of an object: {name: (bytes, what the message must say)}."""
    obj = _elf(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    symtab = next(s for s in obj.sections if s.type == objcheck.SHT_SYMTAB)
    rela = next(s for s in obj.sections if s.type == objcheck.SHT_RELA and s.size)
    strtab = obj.sections[symtab.link]
    sym = _symtab_entry(data, entry_symbol)
    out = {}
    for n in (0, 3, 16, 63, 64, 200, len(data) // 2, len(data) - 1):
        out[f"truncated_{n}"] = (data[:n], "")
    rng = random.Random(0)
    out["random"] = (rng.randbytes(len(data)), "bad magic")
    out["random_after_header"] = (data[:64] + rng.randbytes(len(data) - 64), "")
    out["not_relocatable"] = (_patch(data, 16, "H", objcheck.ET_EXEC), "relocatable")
    out["other_machine"] = (_patch(data, 18, "H", 40), "object code for")
    out["section_table_past_end"] = (_patch(data, 0x28, "Q", len(data) - 32), "outside the file")
    out["section_offset_past_end"] = (_patch(data, shoff + 64 * symtab.index + 24, "Q",
                                             1 << 40), "outside the file")
    out["section_size_past_end"] = (_patch(data, shoff + 64 * rela.index + 32, "Q",
                                           len(data)), "")
    out["symtab_links_to_code"] = (_patch(data, shoff + 64 * symtab.index + 40, "I", 2),
                                   "string table")
    out["strtab_not_terminated"] = (_patch(data, strtab.offset + strtab.size - 1, "B", 0x41),
                                    "NUL-terminated")
    out["symbol_in_no_section"] = (_patch(data, sym + 6, "H", 0x7777), "does not exist")
    out["symbol_name_past_strtab"] = (_patch(data, sym, "I", 1 << 30), "outside its string")
    out["symbol_past_its_section"] = (_patch(data, sym + 8, "Q", 1 << 32), "outside its section")
    out["entry_not_a_function"] = (_patch(data, sym + 4, "B", 0x11), "not a function")
    out["relocation_symbol"] = (_patch(data, rela.offset + 12, "I", 0xFFFF), "names symbol")
    out["relocation_offset"] = (_patch(data, rela.offset, "Q", 1 << 40), "outside")
    out["relocation_type"] = (_patch(data, rela.offset + 8, "I", 0x2A), "relocation type")
    return out


def test_llvm_object_code_damage_is_an_artifact_error(llvm_artifact, tmp_path):
    path, members, want = llvm_artifact
    cases, expected = [], {}

    def case(name, changed: dict[str, bytes], *must, manifest=None, batch=5):
        p = tmp_path / f"{name}.lamina"
        _write(p, {**members, **changed}, manifest)
        cases.append({"name": name, "path": str(p), "shape": [batch, 7]})
        if must:
            expected[name] = must

    case("control", {})
    kernels, gemm32 = members["variant0.kernels.o"], members["variant0.gemm.f32.o"]
    for name, (data, say) in _object_corruptions(kernels, "lamina_entry").items():
        case(f"kernels_{name}", {"variant0.kernels.o": data}, "variant0.kernels.o", say)
    for name, (data, say) in _object_corruptions(gemm32, "lamina_gemm_f32").items():
        case(f"gemm_{name}", {"variant0.gemm.f32.o": data}, "variant0.gemm.f32.o", say)
    case("gemm_swapped_with_kernels", {"variant0.gemm.f32.o": kernels,
                                       "variant0.kernels.o": gemm32},
         "variant0.kernels.o: defines lamina_gemm_f32, not lamina_entry")
    case("gemm_is_kernels", {"variant0.gemm.f32.o": kernels},
         "variant0.gemm.f32.o", "not lamina_gemm_f32")
    from lamina.backends.llvm import llvm_backend

    gemm64 = llvm_backend.gemm_library("f64").lib.object_code
    case("gemm_f32_is_the_f64_gemm", {"variant0.gemm.f32.o": gemm64},
         "variant0.gemm.f32.o: defines lamina_gemm_f64, not lamina_gemm_f32")
    pool = members["variant0.pool.o"]  # the thread pool's object
    case("pool_truncated", {"variant0.pool.o": pool[:100]}, "variant0.pool.o",
         "outside the file")
    case("pool_is_kernels", {"variant0.pool.o": kernels}, "variant0.pool.o", "not ")
    # Well-formed objects that belong elsewhere: only target.json's record can tell.
    case("kernels_of_the_other_variant", {"variant0.kernels.o": members["variant1.kernels.o"]},
         "variant0.kernels.o", "not the object compiled with this IR")

    results = _run_cases(tmp_path, cases)
    np.testing.assert_array_equal(np.asarray(results["control"]["out"], F32), want[5])
    _check_errors(results, expected)


def test_every_flipped_header_byte_is_an_artifact_error(llvm_artifact, tmp_path):
    """Flips anywhere in the ELF header, the section header table, the symbol table and the
    relocations of kernels.o: refused by the structure checks or, where the damaged object is
    still well-formed ELF, by its sha256 recorded in target.json. Never a crash."""
    path, members, _ = llvm_artifact
    data = members["variant0.kernels.o"]
    obj = _elf(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    spans = [(0, 64), (shoff, shoff + 64 * len(obj.sections))]
    spans += [(s.offset, s.offset + s.size) for s in obj.sections
              if s.type in (objcheck.SHT_SYMTAB, objcheck.SHT_RELA)]
    rng = random.Random(1)
    positions = sorted({rng.randrange(a, b) for a, b in spans for _ in range((b - a) // 6)})
    cases = []
    for i in positions:
        flipped = bytearray(data)
        flipped[i] ^= 1 << rng.randrange(8)
        p = tmp_path / f"flip{i}.lamina"
        _write(p, {**members, "variant0.kernels.o": bytes(flipped)})
        cases.append({"name": f"flip{i}", "path": str(p), "shape": [5, 7]})
    assert len(cases) > 100
    results = _run_cases(tmp_path, cases)
    _check_errors(results, {c["name"]: ("variant0.kernels.o",) for c in cases})


def _edited_shapes(text: str) -> str:
    """The batch dimension 5 changed to 6 everywhere: an IR that still parses and verifies."""
    out = text.replace("[5,", "[6,")
    assert out != text
    return out


def test_ir_and_state_that_do_not_match_the_code_are_artifact_errors(llvm_artifact, tmp_path):
    path, members, _ = llvm_artifact
    manifest = json.loads(members["manifest.json"])
    ir0, ir1 = members["variant0.lir"].decode(), members["variant1.lir"].decode()
    edited = _edited_shapes(ir0)
    lm.ir.verify(lm.ir.parse(edited), allow_grad=False)  # only the binding can tell

    def with_signature(sig):
        m = json.loads(json.dumps(manifest))
        m["variants"][0]["signature"] = sig
        return m

    cases, expected = [], {}

    def case(name, changed, *must, manifest=None, batch=5):
        p = tmp_path / f"{name}.lamina"
        _write(p, {**members, **changed}, manifest)
        cases.append({"name": name, "path": str(p), "shape": [batch, 7]})
        expected[name] = must

    case("ir_other_shapes", {"variant0.lir": edited.encode()}, "manifest.json", "variant0.lir",
         "signature", batch=6)
    case("ir_other_shapes_and_signature", {"variant0.lir": edited.encode()},
         "variant0.target.json", "the IR (variant0.lir)", "another graph",
         manifest=with_signature([["x", "f32[6,7]"]]), batch=6)
    case("ir_of_the_other_variant", {"variant0.lir": ir1.encode()},
         "variant0.target.json", "the IR (variant0.lir)",
         manifest=with_signature([["x", "f32[9,7]"]]), batch=9)
    case("variants_ir_swapped", {"variant0.lir": ir1.encode(), "variant1.lir": ir0.encode()},
         "variant0.lir", "signature")
    target = json.loads(members["variant0.target.json"])
    del target["graph"]
    case("target_without_ir_hash", {"variant0.target.json": json.dumps(target).encode()},
         "variant0.target.json", "records no hash")
    case("target_not_json", {"variant0.target.json": b"\xff\xfe{"}, "variant0.target.json",
         "not valid JSON")
    bad_tree = json.loads(json.dumps(manifest))
    bad_tree["variants"][0]["out_tree"] = ["tuple", [["leaf"], ["leaf"]]]
    case("out_tree_with_two_leaves", {}, "manifest.json", "2 leaves", manifest=bad_tree)
    bad_tree = json.loads(json.dumps(manifest))
    bad_tree["variants"][0]["out_tree"] = ["leaf", ["leaf"]]
    case("out_tree_malformed", {}, "manifest.json", "malformed", manifest=bad_tree)

    with np.load(io.BytesIO(members["state.npz"]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def state(**changes):
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, **changes})
        return {"state.npz": buf.getvalue()}

    w = arrays["fc1.w"]
    case("state_wrong_shape", state(**{"fc1.w": np.zeros((7, 13), F32)}), "state.npz",
         "fc1.w", "f32[7,12]")
    case("state_transposed", state(**{"fc1.w": np.ascontiguousarray(w.T)}), "state.npz",
         "fc1.w")
    case("state_wrong_dtype", state(**{"fc1.w": w.astype(np.float64)}), "state.npz", "fc1.w")
    case("state_big_endian", state(**{"fc1.w": w.astype(">f4")}), "state.npz", "fc1.w")
    case("state_complex", state(**{"fc1.w": w.astype(np.complex64)}), "state.npz", "fc1.w")
    del arrays["fc1.w"]
    case("state_missing", state(), "state.npz", "fc1.w")

    results = _run_cases(tmp_path, cases)
    _check_errors(results, expected)


# --- the compile cache ------------------------------------------------------------------------

_CACHE_RUNNER = r"""
import json, sys
import numpy as np
import lamina as lm
from lamina import nn
from lamina.backends.llvm import llvm_backend

lm.random.seed(0)
layer = nn.Linear(7, 3)
f = lm.compile(lambda x: lm.relu(layer(x)), backend="llvm")
x = np.linspace(-1, 1, 35, dtype=np.float32).reshape(5, 7)
out = f(x)
print(json.dumps({"out": out.tolist(), "stats": llvm_backend.STATS}))
"""


def _run_cached(tmp_path, cache: str) -> tuple[dict, str]:
    env = {**os.environ, "LAMINA_CACHE_DIR": cache, "LAMINA_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-c", _CACHE_RUNNER], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[:len(data) // 3]
    if how == "random":
        return random.Random(2).randbytes(len(data))
    obj = _elf(data)  # "symbol_table": every symbol points into section 0x7777
    symtab = next(s for s in obj.sections if s.type == objcheck.SHT_SYMTAB)
    bad = bytearray(data)
    for k in range(1, len(obj.symbols)):
        struct.pack_into("<H", bad, symtab.offset + 24 * k + 6, 0x7777)
    return bytes(bad)


def test_damaged_cache_entries_are_misses_and_are_rebuilt(tmp_path):
    cache = str(tmp_path / "cache")
    first, _ = _run_cached(tmp_path, cache)
    assert first["stats"]["compiled"] == 1
    entries = sorted(f for f in os.listdir(cache) if f.endswith(".o"))
    names = set()
    for e in entries:
        with open(os.path.join(cache, e[:-2] + ".json")) as f:
            names.add(json.load(f)["name"])
    assert {"lambda", "lamina_gemm_f32"} <= names  # the function's object, the GEMM's (...)
    for how in ("truncated", "random", "symbol_table"):
        for name in entries:
            path = os.path.join(cache, name)
            with open(path, "rb") as f:
                bad = _damage(f.read(), how)
            # The damage comes with a matching checksum: only the content check can tell.
            with open(path, "wb") as f:
                f.write(bad)
            meta_path = path[:-2] + ".json"
            with open(meta_path) as f:
                meta = json.load(f)
            meta["sha256"] = hashlib.sha256(bad).hexdigest()
            with open(meta_path, "w") as f:
                json.dump(meta, f)
        run, err = _run_cached(tmp_path, cache)
        assert run["out"] == first["out"], how
        assert run["stats"]["compiled"] == 1 and run["stats"]["cache_hits"] == 0, how
        assert err.count("was damaged") == len(entries), err
        for name in entries:  # rebuilt and written back
            with open(os.path.join(cache, name), "rb") as f:
                _elf(f.read())
    last, err = _run_cached(tmp_path, cache)
    assert last["out"] == first["out"] and last["stats"]["cache_hits"] == 1, err


def test_stale_temporary_files_are_swept_once_per_process(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    (folder / "triton" / "src").mkdir(parents=True)
    # A writer killed mid-write: its pid is gone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    me = os.getpid()
    now = time.time()

    def make(rel: str, age: float):
        p = folder / rel
        p.write_bytes(b"partial")
        os.utime(p, (now - age, now - age))
        return p

    gone = [make(f"a.o.tmp{dead_pid}", 120), make(f"triton/src/k.py.tmp{dead_pid}", 120),
            make(f"b.json.tmp{me}", 3600)]  # a live pid, but far too old: reused
    kept = [make(f"c.o.tmp{dead_pid}", 1),  # too recent: perhaps a writer we cannot see
            make(f"d.o.tmp{me}", 5),  # a live writer
            make("e.o", 3600), make("index.json", 3600), make("f.tmpfile", 3600)]
    monkeypatch.setattr(cache_mod, "_SWEPT", set())
    cache_mod.Cache(str(folder))
    assert [p.exists() for p in gone] == [False] * len(gone)
    assert [p.exists() for p in kept] == [True] * len(kept)
    # Once per process and folder: a second open does not list the folder again.
    late = make(f"g.o.tmp{dead_pid}", 120)
    cache_mod.Cache(str(folder))
    assert late.exists()
    assert cache_mod.sweep_temp_files(str(folder)) == [str(late)]


# --- triton artifacts -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_artifact(tmp_path_factory):
    pytest.importorskip("triton")
    pytest.importorskip("torch", reason="Triton's interpreter needs torch (lamina[triton-test])")
    tmp = tmp_path_factory.mktemp("triton_artifact")
    lm.random.seed(0)
    layer = nn.Linear(7, 3)
    f = lm.compile(lambda x: lm.relu(layer(x)), backend="triton")
    x = np.linspace(-1, 1, 35, dtype=F32).reshape(5, 7)
    want = f(x)  # under Triton's interpreter without a GPU
    path = tmp / "t.lamina"
    f.save(path)
    return path, _members(path), want


def test_triton_kernels_damage_is_an_artifact_error(triton_artifact, tmp_path):
    path, members, want = triton_artifact
    doc = json.loads(members["variant0.kernels.json"])
    cases, expected = [], {}

    def case(name, edit, *must, changed=None, manifest=None):
        d = json.loads(json.dumps(doc))
        if edit is not None:
            edit(d)
        extra = {"variant0.kernels.json": json.dumps(d).encode(), **(changed or {})}
        p = tmp_path / f"{name}.lamina"
        _write(p, {**members, **extra}, manifest)
        cases.append({"name": name, "path": str(p), "shape": [5, 7]})
        if must:
            expected[name] = ("variant0.kernels.json",) + must

    import base64

    def binary(d, target):
        (entry,) = d["kernels"]
        (bins,) = entry["binaries"].values()
        return next(b for b in bins if b["target"] == target)

    def set_cubin(target, fn):
        def edit(d):
            b = binary(d, target)
            b["cubin"] = base64.b64encode(fn(base64.b64decode(b["cubin"]))).decode()
        return edit

    def set_field(*keys, value):
        def edit(d):
            obj = d
            for k in keys[:-1]:
                obj = obj[k]
            obj[keys[-1]] = value
        return edit

    case("control", None)
    case("cubin_truncated", set_cubin("sm_90", lambda c: c[:500]), "sm_90: cubin", "outside")
    case("cubin_random", set_cubin("sm_90", lambda c: random.Random(3).randbytes(len(c))),
         "bad magic")
    case("cubin_not_base64", lambda d: binary(d, "sm_80").update(cubin="@@@"), "base64")
    def swap_cubins(d):
        a, b = binary(d, "sm_80"), binary(d, "sm_90")
        a["cubin"], b["cubin"] = b["cubin"], a["cubin"]

    case("cubins_swapped", swap_cubins, "the cubin is for sm_")
    case("cubin_kernel_renamed", set_cubin("sm_80", lambda c: c.replace(
        b"fused_matmul_add_relu\x00", b"fused_matmul_add_relX\x00")),
        "not fused_matmul_add_relu")
    case("ptx_params", lambda d: binary(d, "sm_90").update(params=[".u64"]), "parameters")
    case("ptx_other_target", lambda d: binary(d, "sm_90").update(
        ptx=binary(d, "sm_90")["ptx"].replace(".target sm_90a", ".target sm_75")), "PTX")
    case("shared_memory", lambda d: binary(d, "sm_90").update(shared=-1), "shared memory")
    case("source_not_python", set_field("kernels", 0, "source", "source",
                                        value="def broken(:\n"), "not Python")
    case("source_other_function", set_field("kernels", 0, "source", "source",
                                            value="import triton\ndef other():\n    pass\n"),
         "defines no function")
    case("name_is_a_path", set_field("kernels", 0, "source", "name", value="../../evil"),
         "not an identifier")
    case("argument_out_of_range", set_field("kernels", 0, "source", "args", 0,
                                            value=["operand", 99]), "argument")
    case("grid_negative", set_field("kernels", 0, "source", "grid", value=[-1, 1, 1]), "grid")
    case("unknown_field", set_field("kernels", 0, "source", "evil", value=1), "source")
    case("no_kernels", set_field("kernels", value={}), "'kernels'")
    case("not_json", None, changed={"variant0.kernels.json": b"\xff not json"})
    expected["not_json"] = ("variant0.kernels.json", "not valid JSON")
    edited = _edited_shapes(members["variant0.lir"].decode())
    manifest = json.loads(members["manifest.json"])
    manifest["variants"][0]["signature"] = [["x", "f32[6,7]"]]
    cases_before = len(cases)
    case("ir_other_shapes", None, "the IR (variant0.lir)", "another graph",
         changed={"variant0.lir": edited.encode()}, manifest=manifest)
    cases[cases_before]["shape"] = [6, 7]

    results = _run_cases(tmp_path, cases, timeout=300)
    np.testing.assert_array_equal(np.asarray(results["control"].get("out"), F32), want)
    _check_errors(results, expected)
