"""Runtime tests: artifacts (save, load, run in a fresh process, layout, atomic writes) and the
buffer rules of a call (outputs never alias inputs or state; state is updated in place).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn, optim
from lamina.nn import functional as F

F32 = np.float32

# Runs in a fresh interpreter: loads an artifact, calls it ``steps`` times on the arrays in an
# .npz file and writes every output leaf and the final state to another .npz file. It imports
# nothing but numpy and lamina (not this test module, not the code that defined the function).
_RUNNER = r"""
import sys
import numpy as np
import lamina as lm

artifact, inputs, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
assert "test_runtime" not in sys.modules
f = lm.load(artifact)
with np.load(inputs, allow_pickle=False) as npz:
    args = [npz[f"a{i}"] for i in range(len(npz.files))]
results = {}
for s in range(steps):
    r = f(*args)
    leaves = list(r) if isinstance(r, (tuple, list)) else [r]
    for i, leaf in enumerate(leaves):
        results[f"step{s}.out{i}"] = leaf
for k, v in f.state_dict().items():
    results[f"state:{k}"] = v
np.savez(out, **results)
"""


def _run_fresh(tmp_path, artifact, args, steps=1) -> dict[str, np.ndarray]:
    inputs, out = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, **{f"a{i}": a for i, a in enumerate(args)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(artifact), str(inputs), str(out),
                           str(steps)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _assert_identical(actual, expected, what=""):
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    assert np.array_equal(actual, expected), what


class MLP(nn.Module):
    def __init__(self):
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def __call__(self, x):
        return self.fc2(lm.tanh(self.fc1(x)))


def _data(rng, n=8):
    x = rng.standard_normal((n, 6)).astype(F32)
    y = rng.integers(0, 3, n).astype(np.int32)
    return x, y


# --- save / load ------------------------------------------------------------------------------


def test_save_load_round_trip(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: model(x), backend=backend)
    x, _ = _data(rng)
    want = forward(x)
    path = tmp_path / "mlp.lamina"
    forward.save(path)
    loaded = lm.load(path)
    got = loaded(x)
    _assert_identical(got, want)
    assert loaded.backend == backend
    assert loaded.stages() == ["final"]
    assert "x: f32[8,6]" in loaded.signatures[0]
    # The loaded function owns its state: it holds the saved weights.
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)


def test_loaded_mlp_forward_in_a_fresh_process_is_bit_identical(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: (model(x), lm.softmax(model(x))), backend=backend)
    x, _ = _data(rng)
    want = forward(x)
    path = tmp_path / "forward.lamina"
    forward.save(path)
    got = _run_fresh(tmp_path, path, [x])
    _assert_identical(got["step0.out0"], want[0], "logits")
    _assert_identical(got["step0.out1"], want[1], "softmax")


def test_loaded_train_step_in_a_fresh_process_continues_training(backend, rng, tmp_path):
    lm.random.seed(3)
    model = MLP()
    opt = optim.Adam(model.parameters(), lr=0.01)

    @lm.compile(backend=backend)
    def train_step(x, y):
        return opt.minimize(F.cross_entropy(model(x), y))

    x, y = _data(rng)
    train_step.lower(x, y)  # compile without running: the artifact holds the initial state
    path = tmp_path / "train.lamina"
    train_step.save(path)
    steps = 4
    fresh = _run_fresh(tmp_path, path, [x, y], steps=steps)
    in_process = lm.load(path)
    in_process_losses = [in_process(x, y) for _ in range(steps)]
    losses = [train_step(x, y) for _ in range(steps)]
    assert float(losses[-1]) < float(losses[0])
    for s in range(steps):
        _assert_identical(fresh[f"step{s}.out0"], losses[s], f"loss at step {s}")
        _assert_identical(in_process_losses[s], losses[s], f"loss at step {s}")
    state = {**model.state_dict(), **opt.state_dict()}
    assert {k[len("state:"):] for k in fresh if k.startswith("state:")} == set(state)
    for k, v in state.items():
        _assert_identical(fresh[f"state:{k}"], v, k)
        _assert_identical(in_process.state_dict()[k], v, k)


def test_loaded_function_state_is_separate_from_the_model(backend, rng, tmp_path):
    w = nn.Parameter(np.ones(3, F32), "w")
    opt = optim.SGD([w], lr=0.5)
    step = lm.compile(lambda x: opt.minimize(((w - x) ** 2).sum()), backend=backend)
    x = np.zeros(3, F32)
    step.lower(x)
    step.save(tmp_path / "s.lamina")
    loaded = lm.load(tmp_path / "s.lamina")
    loaded(x)
    np.testing.assert_array_equal(w.numpy(), np.ones(3, F32))
    assert_close(loaded.state_dict()["w"], np.zeros(3, F32))


def test_multiple_variants_dispatch_by_signature(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: model(x), backend=backend)
    x4, x9 = rng.standard_normal((4, 6)).astype(F32), rng.standard_normal((9, 6)).astype(F32)
    x64 = x4.astype(np.float64)
    want4, want9 = forward(x4), forward(x9)
    forward.lower(lm.TensorType((2, 6), "f32"))
    path = tmp_path / "multi.lamina"
    forward.save(path)
    loaded = lm.load(path)
    assert len(loaded.variants) == 3
    _assert_identical(loaded(x9), want9)
    _assert_identical(loaded(x4), want4)
    assert loaded(np.zeros((2, 6), F32)).shape == (2, 3)
    with zipfile.ZipFile(path) as zf:
        assert {"variant0.lir", "variant1.lir", "variant2.lir"} <= set(zf.namelist())
    with pytest.raises(lm.SignatureError) as e:
        loaded(x64)
    msg = str(e.value)
    assert "no compiled variant" in msg and "f32[4,6]" in msg and "f32[9,6]" in msg
    # The variants share one copy of the weights.
    with zipfile.ZipFile(path) as zf, np.load(io.BytesIO(zf.read("state.npz"))) as npz:
        assert sorted(npz.files) == sorted(model.state_dict())


def test_loaded_ir_parses_back(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: model(x), backend=backend)
    forward(_data(rng)[0])
    forward.save(tmp_path / "f.lamina")
    loaded = lm.load(tmp_path / "f.lamina")
    text = loaded.ir()
    assert text == loaded.ir("final") == loaded.ir(variant=0)
    g = lm.ir.parse(text)
    assert str(g).strip() == text.strip()
    assert text.strip() == forward.ir().strip()
    assert "fc1.w" in text and "matmul" in text
    with pytest.raises(lm.LaminaError, match="final IR"):
        loaded.ir("traced")


def test_artifact_layout_is_a_zip_without_pickle(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: {"logits": model(x), "nothing": None}, backend=backend)
    x, _ = _data(rng)
    forward(x)
    path = tmp_path / "f.lamina"
    forward.save(path)
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        members = {n: zf.read(n) for n in names}
    assert {"manifest.json", "variant0.lir", "state.npz"} <= set(names)
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "lamina-artifact"
    assert manifest["format_version"] == 1
    assert manifest["backend"] == backend
    assert manifest["lamina_version"] == lm.__version__
    assert manifest["variants"][0]["signature"] == [["x", "f32[8,6]"]]
    for member, digest in manifest["checksums"].items():
        assert hashlib.sha256(members[member]).hexdigest() == digest
    assert set(manifest["checksums"]) == set(names) - {"manifest.json"}
    with np.load(io.BytesIO(members["state.npz"]), allow_pickle=False) as npz:
        stored = {k: npz[k] for k in npz.files}
    assert set(stored) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert stored[k].dtype != object
        _assert_identical(stored[k], v, k)
    lm.ir.parse(members["variant0.lir"].decode())
    out = lm.load(path)(x)
    assert set(out) == {"logits", "nothing"} and out["nothing"] is None


def test_save_before_compiling_is_an_error(backend, tmp_path):
    fc = lm.compile(lambda x: x, backend=backend)
    with pytest.raises(lm.ArtifactError, match="nothing to save"):
        fc.save(tmp_path / "empty.lamina")
    assert not (tmp_path / "empty.lamina").exists()


def test_a_loaded_function_can_be_saved_again(backend, rng, tmp_path):
    model = MLP()
    forward = lm.compile(lambda x: model(x), backend=backend)
    x, _ = _data(rng)
    want = forward(x)
    forward.save(tmp_path / "a.lamina")
    lm.load(tmp_path / "a.lamina").save(tmp_path / "b.lamina")
    _assert_identical(lm.load(tmp_path / "b.lamina")(x), want)


# --- atomic writes ----------------------------------------------------------------------------


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device (simulated)")


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_failed_save_leaves_no_file(backend, rng, tmp_path, monkeypatch, where):
    forward = lm.compile(lambda x: x * 2.0, backend=backend)
    forward(np.ones(3, F32))
    target = tmp_path / "f.lamina"
    monkeypatch.setattr(os, where, _fail)
    with pytest.raises(OSError):
        forward.save(target)
    monkeypatch.undo()
    assert not target.exists()
    assert os.listdir(tmp_path) == [], "a failed save must not leave temporary files"


def test_failed_save_keeps_the_old_artifact(backend, tmp_path, monkeypatch):
    forward = lm.compile(lambda x: x * 2.0, backend=backend)
    forward(np.ones(3, F32))
    target = tmp_path / "f.lamina"
    forward.save(target)
    old = target.read_bytes()
    forward(np.ones(5, F32))
    monkeypatch.setattr(os, "fsync", _fail)
    with pytest.raises(OSError):
        forward.save(target)
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert len(lm.load(target).variants) == 1


# --- buffers: no aliasing, in-place state -----------------------------------------------------


@pytest.mark.parametrize("which", ["compiled", "loaded"])
def test_outputs_do_not_alias_inputs(backend, rng, tmp_path, which):
    x = rng.standard_normal((3, 4)).astype(F32)
    keep = x.copy()
    f = lm.compile(lambda a: (a, a.reshape(12), a[1:], a.T), backend=backend)
    if which == "loaded":
        f.lower(x)
        f.save(str(tmp_path / "views.lamina"))  # a str path works as well as a Path
        f = lm.load(str(tmp_path / "views.lamina"))
    out = f(x)
    for o in out:
        assert not np.shares_memory(o, x)
        o[...] = 99
    np.testing.assert_array_equal(x, keep)


def test_outputs_do_not_alias_each_other(backend, rng):
    x = rng.standard_normal(4).astype(F32)
    a, b = lm.compile(lambda v: (v + 1.0, v + 1.0), backend=backend)(x)
    np.testing.assert_array_equal(a, b)
    a[...] = 0
    np.testing.assert_array_equal(b, x + 1, err_msg="mutating one output changed another")


def test_outputs_do_not_alias_state(backend):
    model = MLP()
    before = model.state_dict()
    out = lm.compile(lambda: (model.fc1.w, model.fc1.b.reshape(4, 4), model.fc2.w[0]),
                     backend=backend)()
    for o in out:
        for p in model.parameters():
            assert not np.shares_memory(o, p.storage)
        o[...] = -7
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_state_is_updated_in_place(backend, rng):
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    @lm.compile(backend=backend)
    def step(x, y):
        old_w = model.fc1.w  # read before the update: the returned value is the old one
        return opt.minimize(F.cross_entropy(model(x), y)), old_w

    x, y = _data(rng)
    x_keep = x.copy()
    storages = {p.name: p.storage for p in model.parameters()}
    w_before = model.fc1.w.numpy()
    _, returned_w = step(x, y)
    momentum = opt._slots[(id(model.fc1.w), "momentum")].storage
    _, returned_w2 = step(x, y)
    np.testing.assert_array_equal(returned_w, w_before)
    assert not np.array_equal(model.fc1.w.numpy(), w_before)
    for p in model.parameters():
        assert p.storage is storages[p.name], f"{p.name} got new storage"
    assert opt._slots[(id(model.fc1.w), "momentum")].storage is momentum
    assert not np.shares_memory(returned_w2, model.fc1.w.storage)
    np.testing.assert_array_equal(x, x_keep)


def test_loaded_function_updates_its_state_in_place(backend, rng, tmp_path):
    w = nn.Parameter(np.full(3, 2.0, F32), "w")
    opt = optim.SGD([w], lr=0.25)
    step = lm.compile(lambda: opt.minimize((w * w).sum()), backend=backend)
    step.lower()
    step.save(tmp_path / "s.lamina")
    loaded = lm.load(tmp_path / "s.lamina")
    var = loaded.variants[0].variables["w"]
    storage = var.storage
    loaded()
    loaded()
    assert var.storage is storage
    assert_close(storage, np.full(3, 0.5, F32))  # 2 -> 1 -> 0.5 (w - 0.25 * 2w)
