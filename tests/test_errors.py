"""Bad input gives clear errors: the right exception class, a message naming the problem and,
for mistakes in traced code, the user's file and line; corrupt artifacts raise ArtifactError.

Expected line numbers come from marker comments (``# L:name``) found with ``inspect``, so the
tests do not depend on where the code sits in this file.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest

import lamina as lm
from lamina import nn, optim
from lamina.nn import functional as F

F32 = np.float32
_FILE = os.path.basename(__file__)


def _line(marker: str) -> int:
    """The line number of the single line in this file tagged ``# L:<marker>``."""
    lines, _ = inspect.findsource(sys.modules[__name__])
    tag = f"# L:{marker}"
    hits = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(tag)]
    assert len(hits) == 1, f"marker {tag!r} found {len(hits)} times"
    return hits[0]


def _assert_points_at(err: BaseException, marker: str) -> None:
    where = f"{_FILE}:{_line(marker)}"
    assert where in str(err), f"expected {where} in the message:\n{err}"


# --- shapes while tracing ---------------------------------------------------------------------


def test_matmul_shape_mismatch_names_shapes_and_line(backend):
    def f(a, b):
        h = a * 2.0
        return h @ b  # L:matmul

    with pytest.raises(lm.ShapeError) as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32), np.ones((4, 5), F32))
    assert "matmul" in str(e.value) and "f32[2,3]" in str(e.value) and "f32[4,5]" in str(e.value)
    _assert_points_at(e.value, "matmul")


def test_broadcast_mismatch_names_shapes_and_line(backend):
    def f(a, b):
        return a + b  # L:add

    with pytest.raises(lm.ShapeError) as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32), np.ones((3, 2), F32))
    assert "broadcast" in str(e.value) and "[2, 3]" in str(e.value)
    _assert_points_at(e.value, "add")


def test_reshape_mismatch_names_shapes_and_line(backend):
    def f(a):
        return a.reshape(4, 2)  # L:reshape

    with pytest.raises(lm.ShapeError) as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32))
    assert "reshape" in str(e.value) and "[4, 2]" in str(e.value)
    _assert_points_at(e.value, "reshape")


def test_reshape_with_two_unknown_dimensions(backend):
    def f(a):
        return lm.reshape(a, (-1, -1))  # L:reshape2

    with pytest.raises(lm.ShapeError, match="only one dimension can be -1") as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32))
    _assert_points_at(e.value, "reshape2")


def test_concatenate_mismatch_names_shapes_and_line(backend):
    def f(a, b):
        return lm.concatenate([a, b], axis=0)  # L:concat

    with pytest.raises(lm.ShapeError) as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32), np.ones((2, 4), F32))
    assert "concatenate" in str(e.value) and "f32[2,4]" in str(e.value)
    _assert_points_at(e.value, "concat")


def test_index_out_of_bounds_names_line(backend):
    def f(a):
        return a[5]  # L:index

    with pytest.raises(lm.ShapeError, match="out of bounds") as e:
        lm.compile(f, backend=backend)(np.ones((3, 2), F32))
    _assert_points_at(e.value, "index")


def test_loss_shape_mismatch_names_line(backend):
    def f(p, t):
        return F.mse_loss(p, t)  # L:mse

    with pytest.raises(lm.ShapeError, match="mse_loss") as e:
        lm.compile(f, backend=backend)(np.ones(3, F32), np.ones(4, F32))
    _assert_points_at(e.value, "mse")


# --- dtypes -----------------------------------------------------------------------------------


def test_cross_entropy_needs_integer_labels(backend):
    def f(z, y):
        return F.cross_entropy(z, y)  # L:ce

    with pytest.raises(lm.DTypeError) as e:
        lm.compile(f, backend=backend)(np.zeros((2, 3), F32), np.zeros(2, F32))
    assert "labels must be integer" in str(e.value) and "f32[2]" in str(e.value)
    _assert_points_at(e.value, "ce")


def test_cross_entropy_label_shape(backend):
    def f(z, y):
        return F.cross_entropy(z, y)  # L:ce_shape

    with pytest.raises(lm.ShapeError) as e:
        lm.compile(f, backend=backend)(np.zeros((2, 3), F32), np.zeros(3, np.int32))
    _assert_points_at(e.value, "ce_shape")


def test_take_needs_integer_indices(backend):
    def f(a, i):
        return lm.take(a, i, axis=1)  # L:take

    with pytest.raises(lm.DTypeError) as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32), np.zeros(2, F32))
    assert "integer" in str(e.value) and "f32[2]" in str(e.value)
    _assert_points_at(e.value, "take")


def test_float_array_index_is_rejected(backend):
    def f(a, i):
        return a[i]  # L:float_index

    with pytest.raises(lm.LaminaError, match="integer") as e:
        lm.compile(f, backend=backend)(np.ones((2, 3), F32), np.zeros(2, F32))
    _assert_points_at(e.value, "float_index")


def test_boolean_mask_index_is_rejected_with_a_hint():
    """A traced mask selects a number of elements known only at run time: no static shape.
    (A constant numpy mask selects, as numpy: tests/test_mask_select.py.)"""
    def f(a):
        return a[a > 0]  # L:mask

    with pytest.raises(lm.TraceError, match="lm.where") as e:
        lm.trace(f, np.ones(2, F32))
    _assert_points_at(e.value, "mask")
    got = lm.compile(lambda a: a[np.array([True, False])], backend="numpy")(np.ones(2, F32))
    assert got.shape == (1,)


# --- Python control flow and conversions on traced tensors --------------------------------------


def test_python_if_on_a_traced_tensor(backend):
    def f(a):
        if a.sum() > 0:  # L:if
            return a
        return -a

    with pytest.raises(lm.TraceError) as e:
        lm.compile(f, backend=backend)(np.ones(3, F32))
    assert "lm.where" in str(e.value) and "if" in str(e.value)
    _assert_points_at(e.value, "if")


def test_python_and_on_a_traced_tensor():
    def f(a):
        return (a > 0) and (a < 1)  # L:and

    with pytest.raises(lm.TraceError) as e:
        lm.trace(f, np.ones(3, F32))
    _assert_points_at(e.value, "and")


@pytest.mark.parametrize("kind", ["float", "int", "asarray", "item", "setitem"])
def test_conversions_of_a_traced_tensor(backend, kind):
    def f(a):
        s = a.sum()
        if kind == "float":
            return float(s)  # L:float
        if kind == "int":
            return int(s)  # L:int
        if kind == "asarray":
            return np.asarray(a)  # L:asarray
        if kind == "item":
            return s.item()  # L:item
        a[0] = 1.0  # L:setitem
        return a

    with pytest.raises(lm.TraceError) as e:
        lm.compile(f, backend=backend)(np.ones(3, F32))
    assert "traced" in str(e.value) or "immutable" in str(e.value)
    _assert_points_at(e.value, kind)


# --- leaked tracers ---------------------------------------------------------------------------


def _leak(backend):
    leaked = []

    def f(a):
        leaked.append(a * 2.0)
        return a

    lm.compile(f, backend=backend)(np.ones(3, F32))
    return leaked[0]


def test_leaked_tracer_in_an_eager_op(backend):
    t = _leak(backend)
    with pytest.raises(lm.TraceError, match="after its trace ended") as e:
        lm.exp(t)  # L:leak_eager
    _assert_points_at(e.value, "leak_eager")


def test_leaked_tracer_with_an_operator(backend):
    t = _leak(backend)
    with pytest.raises(lm.TraceError, match="trace"):
        t + 1.0


def test_leaked_tracer_in_another_trace(backend):
    t = _leak(backend)

    def g(a):
        return a + t  # L:leak_other

    with pytest.raises(lm.LaminaError, match="escaped") as e:
        lm.compile(g, backend=backend)(np.ones(3, F32))
    _assert_points_at(e.value, "leak_other")


# --- gradients --------------------------------------------------------------------------------


def test_grad_of_a_non_scalar(backend):
    def f(a):
        return lm.grad(lambda b: b * 2.0)(a)  # L:grad_nonscalar

    with pytest.raises(lm.GradError, match="scalar") as e:
        lm.compile(f, backend=backend)(np.ones(3, F32))
    assert "f32[3]" in str(e.value)
    _assert_points_at(e.value, "grad_nonscalar")


def test_grad_with_respect_to_an_integer_argument(backend):
    def f(a, w):
        return lm.grad(lambda a_, w_: (a_ * w_).sum())(a, w)  # L:grad_int

    with pytest.raises(lm.GradError, match="int32") as e:
        lm.compile(f, backend=backend)(np.ones(3, np.int32), np.ones(3, F32))
    _assert_points_at(e.value, "grad_int")


def test_grad_argnums_out_of_range(backend):
    def f(a):
        return lm.grad(lambda b: b.sum(), argnums=2)(a)  # L:argnums

    with pytest.raises(lm.GradError, match="argnums") as e:
        lm.compile(f, backend=backend)(np.ones(3, F32))
    _assert_points_at(e.value, "argnums")


def test_has_aux_needs_a_pair(backend):
    def f(a):
        return lm.grad(lambda b: b.sum(), has_aux=True)(a)  # L:aux

    with pytest.raises(lm.GradError, match="has_aux") as e:
        lm.compile(f, backend=backend)(np.ones(3, F32))
    _assert_points_at(e.value, "aux")


def test_optimizer_rejects_an_integer_parameter():
    p = nn.Parameter(np.ones(3, np.int32), "counts")
    with pytest.raises(lm.GradError) as e:
        optim.Adam([nn.Parameter(np.ones(2, F32), "w"), p])
    assert "counts" in str(e.value) and "i32[3]" in str(e.value)


def test_minimize_with_a_non_scalar_loss_names_line(backend):
    w = nn.Parameter(np.ones(3, F32), "w")
    opt = optim.SGD([w])

    def step():
        return opt.minimize(w * 2.0)  # L:minimize

    with pytest.raises(lm.GradError, match="scalar") as e:
        lm.compile(step, backend=backend)()
    _assert_points_at(e.value, "minimize")


# --- signatures of compiled and loaded functions ----------------------------------------------


def _compiled_and_loaded(backend, tmp_path):
    def add(a, b):
        return a + b

    fc = lm.compile(add, backend=backend)
    x = np.ones((2, 3), F32)
    fc(x, x)
    fc.save(tmp_path / "add.lamina")
    return fc, lm.load(tmp_path / "add.lamina"), x


@pytest.mark.parametrize("which", ["compiled", "loaded"])
@pytest.mark.parametrize("n", [1, 3])
def test_wrong_argument_count(backend, tmp_path, which, n):
    fc, loaded, x = _compiled_and_loaded(backend, tmp_path)
    f = fc if which == "compiled" else loaded
    with pytest.raises(lm.SignatureError) as e:
        f(*[x] * n)
    msg = str(e.value)
    assert "2" in msg and str(n) in msg, msg


@pytest.mark.parametrize("which", ["lowered", "loaded"])
@pytest.mark.parametrize("bad, got", [
    (np.ones((3, 3), F32), "shape (3, 3)"),
    (np.ones((2, 3), np.float64), "float64"),
    (np.ones((2, 3), np.int32), "int32"),
    (np.ones(6, F32), "shape (6,)"),
])
def test_wrong_shape_or_dtype(backend, tmp_path, which, bad, got):
    fc, loaded, x = _compiled_and_loaded(backend, tmp_path)
    # A compiled function recompiles for a new signature; a compiled variant (fc.lower) and a
    # loaded artifact cannot, so they must reject it.
    f = fc.lower(x, x) if which == "lowered" else loaded
    with pytest.raises(lm.SignatureError) as e:
        f(x, bad)
    msg = str(e.value)
    assert "'b'" in msg and "f32[2,3]" in msg and got in msg, msg


@pytest.mark.parametrize("which", ["compiled", "loaded"])
@pytest.mark.parametrize("bad, kind", [("hello", "str"), ([[1, 2, 3], [4, 5, 6]], "list"),
                                       (None, "NoneType"), ({"a": 1}, "dict")])
def test_non_numeric_argument(backend, tmp_path, which, bad, kind):
    fc, loaded, x = _compiled_and_loaded(backend, tmp_path)
    f = fc if which == "compiled" else loaded
    with pytest.raises(lm.SignatureError) as e:
        f(x, bad)
    msg = str(e.value)
    assert kind in msg, msg
    assert "'b'" in msg or "argument 1" in msg, msg


def test_object_array_argument(backend, tmp_path):
    fc, loaded, x = _compiled_and_loaded(backend, tmp_path)
    for f in (fc, loaded):
        with pytest.raises(lm.SignatureError):
            f(x, np.array([object()] * 6, dtype=object).reshape(2, 3))


def test_unknown_keyword_argument(backend):
    fc = lm.compile(lambda a: a, backend=backend)
    with pytest.raises(lm.SignatureError, match="nope"):
        fc(np.ones(2, F32), nope=1)


def test_unknown_backend():
    with pytest.raises(lm.LaminaError) as e:
        lm.compile(lambda a: a, backend="tpu9000")
    assert "tpu9000" in str(e.value) and "numpy" in str(e.value)

    with pytest.raises(lm.LaminaError, match="tpu9000"):
        @lm.compile(backend="tpu9000")
        def f(a):
            return a


def test_compile_needs_a_callable():
    with pytest.raises(lm.LaminaError, match="needs a function"):
        lm.compile(42)


def test_missing_static_argument(backend):
    fc = lm.compile(lambda a, n: a * n, backend=backend, static_argnums=(1,))
    with pytest.raises(lm.SignatureError, match="static"):
        fc(np.ones(2, F32))


# --- corrupt artifacts ------------------------------------------------------------------------


@pytest.fixture
def artifact(backend, tmp_path):
    """(path, input, expected output) of a small saved model with state."""
    lm.random.seed(0)
    layer = nn.Linear(3, 4)
    fc = lm.compile(lambda x: lm.relu(layer(x)), backend=backend)
    x = np.linspace(-1, 1, 6, dtype=F32).reshape(2, 3)
    want = fc(x)
    path = tmp_path / "model.lamina"
    fc.save(path)
    return path, x, want


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _rewrite(path, members: dict[str, bytes], manifest=None, fix_checksums=True):
    """Write a well-formed zip with ``members`` and ``manifest`` (default: the old one)."""
    members = dict(members)
    if manifest is None:
        manifest = json.loads(members["manifest.json"])
    if fix_checksums and isinstance(manifest, dict) and isinstance(manifest.get("checksums"),
                                                                   dict):
        manifest["checksums"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()
                                 if n != "manifest.json"}
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _load_error(path) -> lm.ArtifactError:
    with pytest.raises(lm.ArtifactError) as e:
        lm.load(path)
    return e.value


def test_rewrite_helper_keeps_a_valid_artifact(artifact, tmp_path):
    path, x, want = artifact
    out = tmp_path / "same.lamina"
    _rewrite(out, _members(path))
    np.testing.assert_array_equal(lm.load(out)(x), want)


def test_missing_file(tmp_path):
    err = _load_error(tmp_path / "nope.lamina")
    assert "no such file" in str(err)


@pytest.mark.parametrize("data", [b"", b"garbage" * 100, b"PK\x03\x04" + b"\x00" * 50],
                         ids=["empty", "garbage", "zip_magic_only"])
def test_garbage_bytes(tmp_path, data):
    path = tmp_path / "bad.lamina"
    path.write_bytes(data)
    assert "not a lamina artifact" in str(_load_error(path))


def test_not_a_lamina_zip(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    assert "manifest.json" in str(_load_error(path))


def test_truncated_file(artifact, tmp_path):
    path, _, _ = artifact
    data = path.read_bytes()
    cut_path = tmp_path / "cut.lamina"
    cuts = sorted({1, 4, 30, len(data) // 4, len(data) // 2, 3 * len(data) // 4,
                   len(data) - 22, len(data) - 1, *range(0, len(data), 37)})
    for cut in cuts:
        cut_path.write_bytes(data[:cut])
        with pytest.raises(lm.ArtifactError):
            lm.load(cut_path)


@pytest.mark.parametrize("member", ["manifest.json", "variant0.lir", "state.npz"])
@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_flipped_content_byte_is_detected(artifact, tmp_path, member, where):
    path, _, _ = artifact
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    # The member's data follows its 30-byte local header, file name and extra field.
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + int(where * (info.compress_size - 1))] ^= 0x10
    bad = tmp_path / "flipped.lamina"
    bad.write_bytes(bytes(data))
    err = _load_error(bad)
    assert member in str(err), str(err)


def test_any_flipped_byte_loads_unchanged_or_raises_artifact_error(artifact, tmp_path):
    """Flips in zip metadata (dates, flags, method, sizes) must not escape as other errors."""
    path, x, want = artifact
    data = path.read_bytes()
    bad = tmp_path / "flipped.lamina"
    escaped = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        bad.write_bytes(bytes(flipped))
        try:
            out = lm.load(bad)(x)
        except lm.ArtifactError:
            continue
        except Exception as e:  # noqa: BLE001 - collecting what escapes is the point
            escaped.append(f"byte {i}: {type(e).__name__}: {e}")
            continue
        if not np.array_equal(out, want):
            escaped.append(f"byte {i}: loaded, but computes something else")
    assert not escaped, "\n".join(escaped[:10])


@pytest.mark.parametrize("member", ["variant0.lir", "state.npz"])
def test_replaced_member_fails_its_checksum(artifact, tmp_path, member):
    path, _, _ = artifact
    members = _members(path)
    if member == "variant0.lir":
        text = members[member].decode().replace("relu(", "abs(")
        assert text != members[member].decode()
        lm.ir.parse(text)  # well-formed: only the checksum can tell
        members[member] = text.encode()
    else:
        with np.load(io.BytesIO(members[member]), allow_pickle=False) as npz:
            arrays = {k: npz[k] + 1 for k in npz.files}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        members[member] = buf.getvalue()
    bad = tmp_path / "replaced.lamina"
    _rewrite(bad, members, fix_checksums=False)
    err = _load_error(bad)
    assert "checksum" in str(err) and member in str(err)


def test_wrong_format_version(artifact, tmp_path):
    path, _, _ = artifact
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = 99
    bad = tmp_path / "future.lamina"
    _rewrite(bad, members, manifest)
    err = _load_error(bad)
    assert "format version 99" in str(err)


@pytest.mark.parametrize("edit", ["not_json", "not_object", "wrong_format", "no_variants",
                                  "no_checksums"])
def test_bad_manifest(artifact, tmp_path, edit):
    path, _, _ = artifact
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    bad = tmp_path / "bad.lamina"
    if edit == "not_json":
        members["manifest.json"] = b"{not json"
        with zipfile.ZipFile(bad, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        if edit == "not_object":
            manifest = [1, 2, 3]
        elif edit == "wrong_format":
            manifest["format"] = "something-else"
        elif edit == "no_variants":
            manifest["variants"] = []
        else:
            del manifest["checksums"]
        _rewrite(bad, members, manifest)
    err = _load_error(bad)
    assert str(bad) in str(err)


@pytest.mark.parametrize("edit", ["variant_without_state", "variant_without_out_tree",
                                  "checksums_not_a_dict", "variant_not_an_object",
                                  "unknown_backend"])
def test_malformed_manifest_fields(artifact, tmp_path, edit):
    path, _, _ = artifact
    members = _members(path)
    manifest = copy.deepcopy(json.loads(members["manifest.json"]))
    if edit == "variant_without_state":
        del manifest["variants"][0]["state"]
    elif edit == "variant_without_out_tree":
        del manifest["variants"][0]["out_tree"]
    elif edit == "checksums_not_a_dict":
        manifest["checksums"] = []
    elif edit == "variant_not_an_object":
        manifest["variants"] = [1]
    else:
        manifest["backend"] = "tpu9000"
    bad = tmp_path / "bad.lamina"
    _rewrite(bad, members, manifest)
    _load_error(bad)


@pytest.mark.parametrize("in_checksums", [True, False])
def test_missing_state_npz(artifact, tmp_path, in_checksums):
    path, _, _ = artifact
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    del members["state.npz"]
    if not in_checksums:
        del manifest["checksums"]["state.npz"]
    bad = tmp_path / "nostate.lamina"
    _rewrite(bad, members, manifest, fix_checksums=False)
    err = _load_error(bad)
    assert "state.npz" in str(err) and "missing" in str(err)


@pytest.mark.parametrize("edit", ["pickled", "garbage", "wrong_shape", "wrong_dtype",
                                  "missing_array"])
def test_bad_state_npz(artifact, tmp_path, edit):
    path, _, _ = artifact
    members = _members(path)
    with np.load(io.BytesIO(members["state.npz"]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    buf = io.BytesIO()
    if edit == "pickled":
        arrays["w"] = np.array([{"evil": 1}], dtype=object)
        np.savez(buf, allow_pickle=True, **arrays)
    elif edit == "garbage":
        buf.write(b"definitely not npz")
    elif edit == "wrong_shape":
        arrays["w"] = np.zeros((5, 5), F32)
        np.savez(buf, **arrays)
    elif edit == "wrong_dtype":
        arrays["w"] = arrays["w"].astype(np.float64)
        np.savez(buf, **arrays)
    else:
        del arrays["w"]
        np.savez(buf, **arrays)
    members["state.npz"] = buf.getvalue()
    bad = tmp_path / "badstate.lamina"
    _rewrite(bad, members)
    err = _load_error(bad)
    assert "state" in str(err)


@pytest.mark.parametrize("text", [b"this is not IR {", b"graph @f(%x: f32[2]) {\n  return %9\n}",
                                  b"\xff\xfe\x00garbage", b""],
                         ids=["garbage", "undefined_value", "not_utf8", "empty"])
def test_ir_member_that_does_not_parse(artifact, tmp_path, text):
    path, _, _ = artifact
    members = _members(path)
    members["variant0.lir"] = text
    bad = tmp_path / "badir.lamina"
    _rewrite(bad, members)
    err = _load_error(bad)
    assert "IR" in str(err)

