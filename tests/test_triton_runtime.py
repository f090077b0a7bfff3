"""Tests for the GPU runtime: the CUDA driver wrapper (``backends/triton/cuda.py``), the device
program (``backends/triton/device.py``) and state kept on a device (``Variable`` mirrors,
``Executable`` handing Variables to such programs).

Without a GPU, ``DeviceProgram`` runs on ``FakeDevice``: device memory is a numpy heap and a
"kernel" evaluates its node with the reference interpreter, reading and writing through the
pointers the program passes. That checks the pointer plumbing, copies, snapshots, the error
flag and the state mirrors everywhere; the tests marked ``gpu`` run the real thing.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import lamina as lm
from lamina import nn, optim
from lamina.backends.triton import cuda, loops
from lamina.backends.triton.device import DeviceMirror, DeviceProgram, program_tree
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir.errors import LaminaError
from lamina.ir.interpret import eval_node
from lamina.ir.variable import Variable
from lamina.nn import functional as F
from lamina.passes import DEFAULT
from lamina.passes.fuse import fuse_kernels
from lamina.passes.memory import RISKY, error_sites, plan_memory
from lamina.runtime.executable import Executable

F32 = np.float32

ADD_ONE = '''
import triton
import triton.language as tl


@triton.jit
def add_one(x, o):
    i = tl.program_id(0) * 128 + tl.arange(0, 128)
    tl.store(o + i, tl.load(x + i) + 1.0)


@triton.jit
def scaled(x, o, n, s):
    i = tl.program_id(0) * 128 + tl.arange(0, 128)
    tl.store(o + i, tl.load(x + i, mask=i < n) * s, mask=i < n)


@triton.jit
def add_into(x, w, o):
    i = tl.program_id(0) * 128 + tl.arange(0, 128)
    tl.store(o + i, tl.load(x + i) + tl.load(w + i))
'''


def _triton_compile(tmp_path, name: str, signature: dict, arch: int):
    """Triton's AOT compile of ``name`` from ADD_ONE for ``arch`` (no GPU needed)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    path = tmp_path / "kernels_for_test.py"
    if not path.exists():
        path.write_text(ADD_ONE)
    spec = importlib.util.spec_from_file_location(f"kernels_for_test_{tmp_path.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return triton.compile(ASTSource(fn=getattr(module, name), signature=signature, constexprs={}),
                          target=GPUTarget("cuda", arch, 32))


def _binary(compiled, target: str) -> KernelBinary:
    md, ptx = compiled.metadata, compiled.asm["ptx"]
    return KernelBinary(name=md.name, target=target, cubin=compiled.asm["cubin"], ptx=ptx,
                        num_warps=md.num_warps, shared=md.shared,
                        params=cuda.ptx_params(ptx, md.name),
                        global_scratch_size=md.global_scratch_size,
                        global_scratch_align=md.global_scratch_align,
                        profile_scratch_size=md.profile_scratch_size,
                        profile_scratch_align=md.profile_scratch_align)


# --- ptx_params ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [80, 90])
def test_ptx_params_of_real_triton_ptx(tmp_path, arch):
    c = _triton_compile(tmp_path, "scaled", {"x": "*fp32", "o": "*fp32", "n": "i32", "s": "fp32"},
                        arch)
    ptx, name = c.asm["ptx"], c.metadata.name
    params = cuda.ptx_params(ptx, name)
    entry = ptx[ptx.index(f".entry {name}("):]
    assert len(params) == entry[:entry.index(")")].count(".param")
    assert params[:4] == [".u64", ".u64", ".u32", ".f32"]
    assert params[4:] and set(params[4:]) == {".u64"}  # the scratch pointers Triton appends


def test_ptx_params_reads_arrays_picks_the_named_entry_and_says_what_is_missing():
    ptx = """
.visible .entry add_one_more(
\t.param .u32 add_one_more_param_0
)
{ ret; }
.visible .entry add_one(
\t.param .align 64 .b8 add_one_param_0[128],
\t.param .u64 .ptr .global .align 16 add_one_param_1,
\t.param .f64 add_one_param_2
)
{ ret; }
.visible .entry nothing()
{ ret; }
"""
    assert cuda.ptx_params(ptx, "add_one") == [".b8[128]", ".u64", ".f64"]
    assert cuda.ptx_params(ptx, "add_one_more") == [".u32"]
    assert cuda.ptx_params(ptx, "nothing") == []
    with pytest.raises(LaminaError, match="no .entry add in the PTX"):
        cuda.ptx_params(ptx, "add")


# --- the driver: absent here, present on GPU machines ----------------------------------------------


def test_without_the_driver_device_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda, "LIBRARY", "libcuda-not-installed.so.1")
    monkeypatch.setattr(cuda, "_LIB", None)
    monkeypatch.setattr(cuda, "_DEVICE", None)
    assert cuda.available() is False
    with pytest.raises(LaminaError, match=r"needs an NVIDIA GPU and its driver "
                                          r"\(libcuda-not-installed.so.1 not found\)"):
        cuda.device()


@pytest.mark.gpu
def test_device_describes_the_gpu():
    dev = cuda.device()
    assert cuda.available()
    assert dev is cuda.device()
    major, minor = dev.capability
    assert dev.target == f"sm_{major}{minor}" and major >= 7
    assert dev.name
    free, total = dev.memory()
    assert 0 < free <= total


@pytest.mark.gpu
def test_alloc_upload_download_copy_memset_round_trip():
    dev = cuda.device()
    x = np.arange(1000, dtype=F32)
    a, b = dev.alloc(x.nbytes), dev.alloc(x.nbytes)
    dev.upload(a, x)
    dev.copy(b, a, x.nbytes)
    y = np.empty_like(x)
    dev.download(b, y)
    np.testing.assert_array_equal(y, x)
    part = np.empty(10, F32)
    dev.download(a, part, offset=40)
    np.testing.assert_array_equal(part, x[10:20])
    dev.upload(b, np.full(5, 7, F32), offset=4)
    dev.download(b, y)
    np.testing.assert_array_equal(y[:7], [0, 7, 7, 7, 7, 7, 6])
    dev.memset(a, 0)
    dev.download(a, y)
    assert not y.any()
    empty = dev.alloc(0)
    assert empty.ptr == 0 and empty.nbytes == 0
    with pytest.raises(LaminaError, match="do not fit"):
        dev.upload(a, np.zeros(1001, F32))
    a.free()
    assert a.ptr == 0
    a.free()  # freeing twice is harmless


@pytest.mark.gpu
def test_driver_errors_name_the_call_and_the_error():
    with pytest.raises(LaminaError, match=r"cuModuleLoadData failed with CUDA_ERROR_\w+"):
        cuda.device().load_module(b"not a cubin")


@pytest.mark.gpu
def test_launch_an_aot_compiled_triton_kernel(tmp_path):
    dev = cuda.device()
    major, minor = dev.capability
    c = _triton_compile(tmp_path, "scaled", {"x": "*fp32", "o": "*fp32", "n": "i32", "s": "fp32"},
                        major * 10 + minor)
    kb = _binary(c, dev.target)
    n = 1000
    x = np.random.default_rng(0).normal(size=n).astype(F32)
    bx, bo = dev.alloc(x.nbytes), dev.alloc(x.nbytes)
    dev.upload(bx, x)
    fn = dev.load_module(kb.cubin).function(kb.name)
    params = [(cuda.c_uint64, bx.ptr), (cuda.c_uint64, bo.ptr), (cuda.ctypes.c_int32, n),
              (cuda.ctypes.c_float, 2.5)]
    params += [(cuda.c_uint64, 0)] * (len(kb.params) - 4)  # no scratch for this kernel
    timer = dev.timer()
    timer.start()
    dev.launch(fn, ((n + 127) // 128,), 32 * kb.num_warps, kb.shared, params)
    assert timer.stop() > 0
    out = np.empty_like(x)
    dev.download(bo, out)
    np.testing.assert_array_equal(out, x * F32(2.5))


@pytest.mark.gpu
def test_device_program_runs_triton_kernels_and_keeps_state_on_the_gpu(tmp_path):
    dev = cuda.device()
    major, minor = dev.capability
    graph = lm.ir.parse("""graph @acc(%x: f32[256]) state(%w: f32[256]) {
  %0 = kernel @add_into(%x, %w) : f32[256] {
    ^(%a: f32[256], %b: f32[256]):
      %0 = add(%a, %b) : f32[256]
      yield %0
  }
  update %w = %0
  return %w
}""")
    plan = plan_memory(graph)
    assert plan.in_place == ["w"]
    kb = _binary(_triton_compile(tmp_path, "add_into", {"x": "*fp32", "w": "*fp32", "o": "*fp32"},
                                 major * 10 + minor), dev.target)
    src = KernelSource(name="add_into", kind="loop", source=ADD_ONE, signature={},
                       args=[("operand", 0), ("operand", 1), ("output",)], grid=(2, 1, 1))
    program = DeviceProgram(graph, plan, [(graph.nodes[0], src, {"add_into": kb})], {})
    w = Variable(np.arange(256, dtype=F32), "w")
    exe = Executable(graph, program, {"w": w}, ["leaf"], "triton")
    x = np.ones(256, F32)
    old = exe(x)  # returns the old value of w
    np.testing.assert_array_equal(old, np.arange(256))
    exe(x)
    np.testing.assert_array_equal(w.numpy(), np.arange(256) + 2)
    w.assign(np.zeros(256, F32))
    np.testing.assert_array_equal(exe(x), 0)
    np.testing.assert_array_equal(exe.state_dict()["w"], 1)


# --- Variable mirrors (no GPU) -------------------------------------------------------------------


class NumpyMirror:
    """A stand-in for device memory: an array, with counters."""

    def __init__(self):
        self.data = None
        self.uploads = self.downloads = 0

    def upload_from(self, array):
        self.data = np.array(array)
        self.uploads += 1

    def download_into(self, array):
        array[...] = self.data
        self.downloads += 1


def _stepped(v: Variable, m: NumpyMirror, delta=1.0) -> None:
    """What a device step does: change the mirror, tell the Variable."""
    m.data = m.data + F32(delta)
    v.mirror_updated()


def test_attaching_a_mirror_uploads_only_when_the_host_changed():
    v = Variable(np.zeros(3, F32), "v")
    m = NumpyMirror()
    assert v.mirror is None and not v.mirror_current
    v.attach_mirror(m)
    v.attach_mirror(m)
    assert m.uploads == 1 and v.mirror is m and v.mirror_current
    _stepped(v, m)
    v.attach_mirror(m)  # the device holds the newest value already
    assert (m.uploads, m.downloads) == (1, 0)


def test_reading_a_stale_host_downloads_once_and_keeps_the_mirror():
    v = Variable(np.zeros(3, F32), "v")
    m = NumpyMirror()
    v.attach_mirror(m)
    _stepped(v, m)
    _stepped(v, m)
    np.testing.assert_array_equal(v.numpy(), [2, 2, 2])
    np.testing.assert_array_equal(v.host_value(), [2, 2, 2])
    assert m.downloads == 1
    assert v.mirror_current  # numpy()/host_value() only read
    v.attach_mirror(m)
    assert m.uploads == 1


def test_storage_syncs_then_invalidates_the_mirror():
    v = Variable(np.zeros(3, F32), "v")
    m = NumpyMirror()
    v.attach_mirror(m)
    _stepped(v, m, 5.0)
    s = v.storage
    np.testing.assert_array_equal(s, [5, 5, 5])
    assert m.downloads == 1 and not v.mirror_current
    s[0] = 7.0  # the caller writes the host array in place
    v.attach_mirror(m)
    assert m.uploads == 2
    np.testing.assert_array_equal(m.data, [7, 5, 5])


def test_assign_overwrites_without_downloading_and_invalidates_the_mirror():
    v = Variable(np.zeros(3, F32), "v")
    m = NumpyMirror()
    v.attach_mirror(m)
    _stepped(v, m)
    v.assign(np.full(3, 4.0))
    assert m.downloads == 0 and not v.mirror_current
    np.testing.assert_array_equal(v.numpy(), [4, 4, 4])
    v.attach_mirror(m)
    np.testing.assert_array_equal(m.data, [4, 4, 4])
    with pytest.raises(LaminaError, match="cannot assign a value of shape"):
        v.assign(np.zeros(2))
    assert v.mirror_current  # a refused assign changes nothing


def test_a_new_mirror_gets_the_newest_value_from_the_old_one():
    v = Variable(np.zeros(2, F32), "v")
    old, new = NumpyMirror(), NumpyMirror()
    v.attach_mirror(old)
    _stepped(v, old, 3.0)
    v.attach_mirror(new)
    np.testing.assert_array_equal(new.data, [3, 3])
    assert v.mirror is new and old.downloads == 1


# --- Executable and programs that keep state on a device ------------------------------------------


def _counter_graph():
    return lm.ir.parse("""graph @count(%x: f32[2]) state(%n: f32[2]) {
  %0 = add(%n, %x) : f32[2]
  update %n = %0
  return %0
}""")


class MirroringProgram:
    """Keeps ``n`` in a NumpyMirror, as a device program would."""

    takes_variables = True
    owns_outputs = True

    def __init__(self):
        self.mirror = NumpyMirror()
        self.seen = None

    def __call__(self, inputs, state):
        self.seen = state
        n = state["n"]
        n.attach_mirror(self.mirror)
        self.mirror.data = self.mirror.data + inputs[0]
        n.mirror_updated()
        return [self.mirror.data.copy()], {}


def test_executable_passes_variables_to_programs_that_take_them():
    g = _counter_graph()
    n = Variable(np.zeros(2, F32), "n")
    program = MirroringProgram()
    exe = Executable(g, program, {"n": n}, ["leaf"], "fake")
    x = np.array([1, 2], F32)
    exe(x)
    out = exe(x)
    assert program.seen["n"] is n
    np.testing.assert_array_equal(out, [2, 4])
    assert program.mirror.uploads == 1  # the state stayed "on the device"
    np.testing.assert_array_equal(exe.state_dict()["n"], [2, 4])
    assert program.mirror.downloads == 1


def test_executable_passes_arrays_to_other_programs_and_applies_updates():
    g = _counter_graph()
    seen = {}

    def program(inputs, state):
        seen.update(state)
        return [state["n"] + inputs[0]], {"n": state["n"] + inputs[0]}

    n = Variable(np.zeros(2, F32), "n")
    exe = Executable(g, program, {"n": n}, ["leaf"], "fake")
    exe(np.ones(2, F32))
    assert isinstance(seen["n"], np.ndarray) and seen["n"] is n.storage
    np.testing.assert_array_equal(n.numpy(), [1, 1])


def test_a_takes_variables_program_may_return_updates():
    class Program:
        takes_variables = True

        def __call__(self, inputs, state):
            return [inputs[0]], {"n": inputs[0] * 3}

    n = Variable(np.zeros(2, F32), "n")
    Executable(_counter_graph(), Program(), {"n": n}, ["leaf"], "fake")(np.ones(2, F32))
    np.testing.assert_array_equal(n.numpy(), [3, 3])


# --- DeviceProgram on a fake device (no GPU) ------------------------------------------------------


class FakeBuffer:
    def __init__(self, ptr: int, nbytes: int):
        self.ptr, self.nbytes = ptr, nbytes


class FakeDevice:
    """The part of ``cuda.Device`` that DeviceProgram uses, over a numpy heap."""

    target, name = "sm_90", "Fake GPU"

    def __init__(self):
        self.heap = np.zeros(1 << 20, np.uint8)
        self.top = 256  # 0 stays the null pointer
        self.kernels = {}  # cubin -> (kernel node, KernelSource)
        self.log = []  # ("upload", ptr), ("launch", kernel name), ...

    def alloc(self, nbytes):
        if not nbytes:
            return FakeBuffer(0, 0)
        b = FakeBuffer(self.top, nbytes)
        self.top += (nbytes + 255) // 256 * 256
        return b

    def bytes(self, ptr, nbytes):
        assert ptr >= 256 and ptr + nbytes <= self.top, "out of bounds"
        return self.heap[ptr:ptr + nbytes]

    def read(self, ptr, type_):
        return self.bytes(ptr, type_.nbytes).view(type_.dtype.np).reshape(type_.shape).copy()

    def upload(self, buf, array, offset=0):
        self.log.append(("upload", buf.ptr))
        if array.nbytes:
            self.bytes(buf.ptr + offset, array.nbytes)[:] = array.reshape(-1).view(np.uint8)

    def download(self, buf, array, offset=0):
        if array.nbytes:
            array.reshape(-1).view(np.uint8)[:] = self.bytes(buf.ptr + offset, array.nbytes)

    def copy(self, dst, src, nbytes):
        dst, src = (b.ptr if isinstance(b, FakeBuffer) else b for b in (dst, src))
        self.bytes(dst, nbytes)[:] = self.bytes(src, nbytes)

    def memset(self, buf, value=0):
        self.bytes(buf.ptr, buf.nbytes)[:] = value

    def load_module(self, cubin):
        return FakeModule(self, *self.kernels[cubin])

    def prepare(self, fn, grid, block, shared, params):
        assert block == 128 and shared == 0 and all(t is cuda.c_uint64 for t, _ in params)
        return FakeLaunch(fn, [v for _, v in params])


class FakeModule:
    def __init__(self, dev, node, src):
        self.dev, self.node, self.src = dev, node, src

    def function(self, name):
        assert name == self.src.name
        return self


class FakeLaunch:
    """Runs the kernel node with the reference interpreter through the pointers given."""

    def __init__(self, fn: FakeModule, values: list[int]):
        self.fn, self.values = fn, values

    def set(self, i, value):
        self.values[i] = value

    def __call__(self):
        dev, node, src = self.fn.dev, self.fn.node, self.fn.src
        dev.log.append(("launch", src.name))
        assert self.values[len(src.args):] == [0, 0]  # no Triton scratch in these kernels
        if src.kind == "prologue":
            return
        ptr = dict(zip(map(tuple, src.args), self.values))
        operands = [dev.read(ptr["operand", k], v.type) for k, v in enumerate(node.inputs)]
        try:
            out = eval_node(node, operands)
        except LaminaError:  # the kernel found a bad index: it sets the flag, writes nothing
            site = error_sites(dev.graph).index(
                next(m for m in node.region.nodes if m.op in RISKY))
            dev.bytes(ptr["error",], 4).view(np.int32)[0] = site + 1
            return
        dev.bytes(ptr["output",], node.type.nbytes)[:] = \
            np.ascontiguousarray(out, node.dtype.np).reshape(-1).view(np.uint8)


def fake_program(graph, dev: FakeDevice, prologue_for: str | None = None) -> DeviceProgram:
    """A DeviceProgram over ``graph`` whose kernels ``dev`` runs; ``prologue_for`` gets a
    prologue kernel. Loops get bound programs of their bodies (``program_tree``)."""
    dev.graph = graph
    level = loops.plan_levels(graph, plan_memory)
    return program_tree(level, lambda lv: _fake_launches(lv.graph, dev, prologue_for))


def _fake_launches(graph, dev: FakeDevice, prologue_for: str | None) -> list:
    launches = []
    for node in graph.nodes:
        if node.op != "kernel":
            continue
        args = [("operand", k) for k in range(len(node.inputs))] + [("output",)]
        if any(m.op in RISKY for m in node.region.nodes):
            args.append(("error",))
        name = node.attrs["name"]
        src = KernelSource(name=name, kind="loop", source="", signature={}, args=args,
                           grid=(1, 1, 1))
        if name == prologue_for:
            src.prologue = [KernelSource(name=f"{name}_prologue", kind="prologue", source="",
                                         signature={}, args=[("output",)], grid=(1, 1, 1))]
        binaries = {}
        for s in [*src.prologue, src]:
            cubin = f"fake cubin {len(dev.kernels)}".encode()
            dev.kernels[cubin] = (node, s)
            binaries[s.name] = KernelBinary(name=s.name, target="sm_90", cubin=cubin, ptx="",
                                            num_warps=4, shared=0,
                                            params=[".u64"] * (len(s.args) + 2))
        launches.append((node, src, binaries))
    return launches


@pytest.fixture
def fake_device(monkeypatch):
    dev = FakeDevice()
    monkeypatch.setattr(cuda, "device", lambda: dev)
    return dev


class MLP(nn.Module):
    def __init__(self):
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def __call__(self, x):
        return self.fc2(lm.relu(self.fc1(x)))


def _train_step(model, opt):
    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss, model.fc1.b  # the bias before the update: a snapshot of the old state

    return step


def test_training_on_the_fake_device_matches_numpy_and_keeps_state_there(fake_device):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(F32)
    y = np.array([0, 1, 2, 1, 0], np.int32)
    ref_model = MLP()
    ref_opt = optim.Adam(ref_model.parameters(), lr=1e-2)
    ref = lm.compile(_train_step(ref_model, ref_opt), backend="numpy")
    model = MLP()
    model.load_state_dict(ref_model.state_dict())
    opt = optim.Adam(model.parameters(), lr=1e-2)
    fused = lm.compile(_train_step(model, opt), backend="numpy",
                       passes=[*DEFAULT, fuse_kernels]).lower(x, y)
    program = fake_program(fused.graph, fake_device)
    exe = Executable(fused.graph, program, fused.variables, fused.out_tree, "triton")
    state_ptrs = set()
    for step in range(3):
        fake_device.log.clear()
        got, want = exe(x, y), ref(x, y)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        uploads = [p for what, p in fake_device.log if what == "upload"]
        if step == 0:
            state_ptrs = set(uploads) - {b.ptr for b in program.input_bufs}
            assert len(state_ptrs) == len(fused.graph.state)
        else:  # only the inputs
            assert sorted(uploads) == sorted(b.ptr for b in program.input_bufs)
    for k, v in ref_model.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    model.fc2.b.assign(np.zeros(3, F32))  # the host changes one parameter: it alone goes up
    fake_device.log.clear()
    exe(x, y)
    uploads = {p for what, p in fake_device.log if what == "upload"}
    assert uploads - {b.ptr for b in program.input_bufs} == {model.fc2.b.mirror.buffer.ptr}


def test_copies_snapshots_literals_and_outputs_that_no_kernel_writes(fake_device):
    g = lm.ir.parse("""graph @shuffle(%x: f32[3]) state(%a: f32[3], %b: f32[3], %c: f32[3]) {
  %0 = constant() {value=[1.0, 2.0, 3.0]} : f32[3]
  %1 = kernel @k(%x, %a) : f32[3] {
    ^(%p: f32[3], %q: f32[3]):
      %0 = add(%p, %q) : f32[3]
      yield %0
  }
  %2 = kernel @twice(%1) : f32[3] {
    ^(%p: f32[3]):
      %0 = add(%p, %p) : f32[3]
      yield %0
  }
  update %a = %b
  update %b = %a
  update %c = %0
  return %2, %x, %a, %0, %2, %1
}""")
    program = fake_program(g, fake_device, prologue_for="twice")
    a, b, c = (Variable(np.full(3, v, F32), n) for v, n in ((1, "a"), (2, "b"), (3, "c")))
    exe = Executable(g, program, {"a": a, "b": b, "c": c}, ["tuple", [["leaf"]] * 6], "triton")
    x = np.array([10, 20, 30], F32)
    outs = exe(x)
    want = [2 * (x + 1), x, [1, 1, 1], [1, 2, 3], 2 * (x + 1), x + 1]
    for o, w in zip(outs, want):
        np.testing.assert_array_equal(o, w)
    assert outs[1] is not x and outs[0] is not outs[4]
    np.testing.assert_array_equal(a.numpy(), [2, 2, 2])
    np.testing.assert_array_equal(b.numpy(), [1, 1, 1])
    np.testing.assert_array_equal(c.numpy(), [1, 2, 3])
    launches = [n for what, n in fake_device.log if what == "launch"]
    assert launches == ["k", "twice_prologue", "twice"]
    outs = exe(x)  # the swap again, from the device's values
    np.testing.assert_array_equal(outs[2], [2, 2, 2])
    np.testing.assert_array_equal(a.numpy(), [1, 1, 1])


def test_an_index_out_of_range_stops_the_step_before_state_changes(fake_device):
    g = lm.ir.parse("""graph @pick(%x: f32[4], %i: i32[2]) state(%w: f32[4]) {
  %0 = kernel @gather(%x, %i) : f32[2] {
    ^(%p: f32[4], %q: i32[2]):
      %0 = take(%p, %q) {axis=0} : f32[2]
      yield %0
  }
  %1 = kernel @bump(%w, %x) : f32[4] {
    ^(%p: f32[4], %q: f32[4]):
      %0 = add(%p, %q) : f32[4]
      yield %0
  }
  update %w = %1
  return %0
}""")
    program = fake_program(g, fake_device)
    w = Variable(np.zeros(4, F32), "w")
    exe = Executable(g, program, {"w": w}, ["leaf"], "triton")
    x = np.arange(4, dtype=F32)
    np.testing.assert_array_equal(exe(x, np.array([3, 0], np.int32)), [3, 0])
    with pytest.raises(LaminaError, match="take: an index is out of range"):
        exe(x, np.array([0, 9], np.int32))
    assert fake_device.log[-1] == ("launch", "gather")  # bump never ran
    np.testing.assert_array_equal(w.numpy(), x)
    np.testing.assert_array_equal(exe(x, np.array([1, 1], np.int32)), [1, 1])  # flag reset
    np.testing.assert_array_equal(w.numpy(), 2 * x)


def test_binaries_for_other_gpus_only_are_refused(fake_device):
    fake_device.target = "sm_89"
    fused = lm.compile(lambda x: x + 1, backend="numpy",
                       passes=[*DEFAULT, fuse_kernels]).lower(np.ones(2, F32))
    with pytest.raises(LaminaError, match=r"kernel fused_add was compiled for sm_90; this GPU "
                                          r"is sm_89 \(Fake GPU\)"):
        fake_program(fused.graph, fake_device)


def test_device_mirror_is_the_variable_mirror_protocol(fake_device):
    v = Variable(np.arange(3, dtype=F32), "v")
    m = DeviceMirror(fake_device, v.type.nbytes)
    v.attach_mirror(m)
    fake_device.bytes(m.buffer.ptr, 12).view(F32)[:] = [5, 6, 7]
    v.mirror_updated()
    np.testing.assert_array_equal(v.numpy(), [5, 6, 7])


def test_state_that_moved_to_other_device_memory_is_followed(fake_device):
    g = lm.ir.parse("""graph @acc(%x: f32[2]) state(%w: f32[2]) {
  %0 = kernel @bump(%w, %x) : f32[2] {
    ^(%p: f32[2], %q: f32[2]):
      %0 = add(%p, %q) : f32[2]
      yield %0
  }
  update %w = %0
  return %w
}""")
    program = fake_program(g, fake_device)
    assert program.plan.in_place == ["w"]
    w = Variable(np.zeros(2, F32), "w")
    exe = Executable(g, program, {"w": w}, ["leaf"], "triton")
    x = np.ones(2, F32)
    exe(x)
    w.attach_mirror(NumpyMirror())  # e.g. another runtime took the value over
    np.testing.assert_array_equal(exe(x), [1, 1])
    np.testing.assert_array_equal(w.numpy(), [2, 2])
