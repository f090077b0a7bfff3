"""The CUDA driver API through ctypes: what running compiled Triton kernels needs, no torch.

``libcuda.so.1`` is loaded on first use. Every driver call checks its result and raises a
LaminaError naming the call and the error. The process uses one GPU through its *primary*
context (or the context already current, e.g. torch's), so torch and Triton in the same process
see the same memory and the same default stream; everything here runs on that default stream,
in issue order.

    dev = device()                       # dev.target == "sm_90"
    buf = dev.alloc(x.nbytes); dev.upload(buf, x)
    fn = dev.load_module(cubin).function("add_one")
    dev.launch(fn, (blocks, 1, 1), 128, 0, [(ctypes.c_uint64, buf.ptr), ...])
    dev.download(buf, y)                 # waits for the kernels before it
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import weakref
from ctypes import POINTER, byref, c_char_p, c_float, c_int, c_size_t, c_uint, c_uint64, c_void_p

import numpy as np

from lamina.ir.errors import LaminaError

LIBRARY = "libcuda.so.1"
STATIC_SHARED_LIMIT = 48 * 1024  # dynamic shared memory a launch gets without opting in

# enum values from cuda.h
_ATTR_MAJOR, _ATTR_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_*
_ATTR_SHARED_OPTIN = 97  # CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
_FUNC_SHARED_STATIC = 1  # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
_FUNC_MAX_DYNAMIC_SHARED = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_ERROR_OUT_OF_MEMORY = 2

_p = POINTER
_SIGNATURES = {  # argument types; every function returns a CUresult (int)
    "cuInit": [c_uint],
    "cuGetErrorName": [c_int, _p(c_char_p)],
    "cuGetErrorString": [c_int, _p(c_char_p)],
    "cuDeviceGetCount": [_p(c_int)],
    "cuDeviceGet": [_p(c_int), c_int],
    "cuDeviceGetAttribute": [_p(c_int), c_int, c_int],
    "cuDeviceGetName": [c_char_p, c_int, c_int],
    "cuDevicePrimaryCtxRetain": [_p(c_void_p), c_int],
    "cuCtxGetCurrent": [_p(c_void_p)],
    "cuCtxSetCurrent": [c_void_p],
    "cuCtxGetDevice": [_p(c_int)],
    "cuCtxSynchronize": [],
    "cuMemGetInfo_v2": [_p(c_size_t), _p(c_size_t)],
    "cuMemAlloc_v2": [_p(c_uint64), c_size_t],
    "cuMemFree_v2": [c_uint64],
    "cuMemcpyHtoD_v2": [c_uint64, c_void_p, c_size_t],
    "cuMemcpyDtoH_v2": [c_void_p, c_uint64, c_size_t],
    "cuMemcpyDtoD_v2": [c_uint64, c_uint64, c_size_t],
    "cuMemsetD8_v2": [c_uint64, ctypes.c_ubyte, c_size_t],
    "cuModuleLoadData": [_p(c_void_p), c_char_p],
    "cuModuleUnload": [c_void_p],
    "cuModuleGetFunction": [_p(c_void_p), c_void_p, c_char_p],
    "cuFuncGetAttribute": [_p(c_int), c_int, c_void_p],
    "cuFuncSetAttribute": [c_void_p, c_int, c_int],
    "cuLaunchKernel": [c_void_p, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint,
                       c_void_p, _p(c_void_p), _p(c_void_p)],
    "cuEventCreate": [_p(c_void_p), c_uint],
    "cuEventDestroy_v2": [c_void_p],
    "cuEventRecord": [c_void_p, c_void_p],
    "cuEventSynchronize": [c_void_p],
    "cuEventElapsedTime": [_p(c_float), c_void_p, c_void_p],
}

_LIB = None  # the loaded driver, once cuInit succeeded
_DEVICE = None  # the process's Device
_LOCK = threading.Lock()


def _load():
    """The driver library, loaded and initialized on first use."""
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError:
            raise LaminaError(f"the triton backend needs an NVIDIA GPU and its driver ({LIBRARY} "
                              "not found); run on a machine with one, or use backend='llvm' "
                              "for the CPU") from None
        for name, argtypes in _SIGNATURES.items():
            f = getattr(lib, name, None)
            if f is None:
                raise LaminaError(f"the CUDA driver ({LIBRARY}) has no {name}: it is too old "
                                  "for the triton backend; update the NVIDIA driver")
            f.argtypes, f.restype = argtypes, c_int
        _check(lib, "cuInit", lib.cuInit(0))
        _LIB = lib
    return _LIB


def _error_text(lib, code: int) -> str:
    name, text = c_char_p(), c_char_p()
    lib.cuGetErrorName(code, byref(name))
    lib.cuGetErrorString(code, byref(text))
    if not name.value:
        return f"CUresult {code}"
    return f"{name.value.decode()}: {text.value.decode() if text.value else '?'}"


def _check(lib, fn: str, code: int) -> None:
    if code:
        raise LaminaError(f"CUDA driver: {fn} failed with {_error_text(lib, code)}")


def call(fn: str, *args) -> None:
    """Call the driver function ``fn``; LaminaError if it does not return CUDA_SUCCESS."""
    lib = _load()
    _check(lib, fn, getattr(lib, fn)(*args))


def available() -> bool:
    """Whether a CUDA driver and at least one GPU are present (creates no context)."""
    try:
        n = c_int()
        call("cuDeviceGetCount", byref(n))
        return n.value > 0
    except LaminaError:
        return False


def device() -> Device:
    """The process's GPU (created on first use)."""
    global _DEVICE
    with _LOCK:
        if _DEVICE is None:
            _DEVICE = Device()
        return _DEVICE


_PTX_TYPE = re.compile(r"\.(?:[bsu](?:8|16|32|64)|f(?:16|32|64)|pred)")


def ptx_params(ptx: str, name: str) -> list[str]:
    """The parameter types of the entry ``name`` in ``ptx``, in order: ``.u64`` for a pointer,
    ``.u32``, ``.f32``...; an array parameter (``.param .align 8 .b8 p[128]``) reads ``.b8[128]``.
    """
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\(([^)]*)\)", ptx)
    if m is None:
        raise LaminaError(f"no .entry {name} in the PTX")
    types = []
    for item in m.group(1).split(","):
        words = item.split()
        if not words:
            continue
        if words[0] != ".param":
            raise LaminaError(f".entry {name}: cannot read the parameter {item.strip()!r}")
        kinds = [w for w in words[1:-1] if _PTX_TYPE.fullmatch(w)]
        if len(kinds) != 1:
            raise LaminaError(f".entry {name}: cannot read the parameter {item.strip()!r}")
        array = re.search(r"\[\d+\]$", words[-1])
        types.append(kinds[0] + (array.group(0) if array else ""))
    return types


def _release(dev: Device, fn: str, handle: int) -> None:
    """Free a driver object (from a finalizer). A driver in an error state (after a faulting
    kernel) refuses; the memory goes with the context then, and there is nobody to tell."""
    with contextlib.suppress(LaminaError):
        dev.bind()
        call(fn, handle)


class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr`` (0 for an empty buffer), freed with the object."""

    def __init__(self, dev: Device, nbytes: int):
        self.device = dev
        self.nbytes = nbytes
        self.ptr = 0
        if nbytes:
            p = c_uint64()
            lib = _load()
            dev.bind()
            code = lib.cuMemAlloc_v2(byref(p), nbytes)
            if code == _ERROR_OUT_OF_MEMORY:
                free, total = dev.memory()
                raise LaminaError(f"out of GPU memory: {nbytes} bytes wanted, {free} of {total} "
                                  "free")
            _check(lib, "cuMemAlloc_v2", code)
            self.ptr = p.value
            self._free = weakref.finalize(self, _release, dev, "cuMemFree_v2", self.ptr)

    def free(self) -> None:
        """Give the memory back now (the object is empty afterwards)."""
        if self.ptr:
            self.ptr, self.nbytes = 0, 0
            self._free()

    def __repr__(self) -> str:
        return f"<DeviceBuffer {self.nbytes} bytes at {self.ptr:#x}>"


class Function:
    """A kernel in a loaded module."""

    def __init__(self, module: Module, name: str, handle: int):
        self.module = module  # keeps the module loaded
        self.name = name
        self.handle = handle
        self.dynamic_shared_limit = STATIC_SHARED_LIMIT

    def allow_shared(self, nbytes: int) -> None:
        """Let launches use ``nbytes`` of dynamic shared memory (opting in above 48 KiB)."""
        if nbytes <= self.dynamic_shared_limit:
            return
        dev = self.module.device
        static = c_int()
        call("cuFuncGetAttribute", byref(static), _FUNC_SHARED_STATIC, self.handle)
        limit = dev.shared_optin - static.value
        if nbytes > limit:
            raise LaminaError(f"kernel {self.name} needs {nbytes} bytes of shared memory; "
                              f"{dev.name} ({dev.target}) allows {limit} per block")
        call("cuFuncSetAttribute", self.handle, _FUNC_MAX_DYNAMIC_SHARED, limit)
        self.dynamic_shared_limit = limit


class Module:
    """A loaded cubin (unloaded with the object)."""

    def __init__(self, dev: Device, image: bytes):
        self.device = dev
        handle = c_void_p()
        dev.bind()
        call("cuModuleLoadData", byref(handle), image)
        self.handle = handle.value
        weakref.finalize(self, _release, dev, "cuModuleUnload", self.handle)
        self._functions: dict[str, Function] = {}

    def function(self, name: str) -> Function:
        f = self._functions.get(name)
        if f is None:
            handle = c_void_p()
            self.device.bind()
            call("cuModuleGetFunction", byref(handle), self.handle, name.encode())
            f = self._functions[name] = Function(self, name, handle.value)
        return f


class Launch:
    """One kernel launch with its parameters packed once: ``launch()`` issues it again;
    ``set(i, value)`` changes parameter ``i`` in place (e.g. a pointer that moved)."""

    def __init__(self, fn: Function, grid, block, shared: int, params: list[tuple[type, int]]):
        self.fn = fn
        self.grid = _dims(grid)
        self.block = _dims(block)
        self.shared = shared
        fn.allow_shared(shared)
        self.values = [ctype(value) for ctype, value in params]
        self.pointers = (c_void_p * len(self.values))(*map(ctypes.addressof, self.values))

    def set(self, i: int, value) -> None:
        self.values[i].value = value

    def __call__(self) -> None:
        if 0 in self.grid:
            return
        self.fn.module.device.bind()
        call("cuLaunchKernel", self.fn.handle, *self.grid, *self.block, self.shared, None,
             self.pointers, None)


def _dims(d) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int) else tuple(d)
    if not 1 <= len(d) <= 3:
        raise LaminaError(f"a grid or block has 1 to 3 dimensions, got {d}")
    return d + (1,) * (3 - len(d))


class EventTimer:
    """Device time between ``start()`` and ``stop()`` (seconds), measured with CUDA events."""

    def __init__(self, dev: Device):
        self.device = dev
        self.events = []
        dev.bind()
        for _ in range(2):
            e = c_void_p()
            call("cuEventCreate", byref(e), 0)
            self.events.append(e.value)
            weakref.finalize(self, _release, dev, "cuEventDestroy_v2", e.value)

    def start(self) -> None:
        self.device.bind()
        call("cuEventRecord", self.events[0], None)

    def stop(self) -> float:
        """Record the end, wait for it, and return the seconds since ``start()``."""
        self.device.bind()
        call("cuEventRecord", self.events[1], None)
        call("cuEventSynchronize", self.events[1])
        ms = c_float()
        call("cuEventElapsedTime", byref(ms), *self.events)
        return ms.value / 1000.0


class Device:
    """The GPU this process uses: its context, memory and launches. Get it with ``device()``.

    It adopts the context current in the creating thread (torch's, say), else retains device
    0's primary context; any other thread that uses it makes that context current first.
    """

    def __init__(self):
        ctx = c_void_p()
        call("cuCtxGetCurrent", byref(ctx))
        ordinal = c_int()
        if ctx.value:
            call("cuCtxGetDevice", byref(ordinal))
        else:
            call("cuDeviceGet", byref(ordinal), 0)
            call("cuDevicePrimaryCtxRetain", byref(ctx), ordinal)
            call("cuCtxSetCurrent", ctx)
        self.context = ctx.value
        self.ordinal = ordinal.value
        self._local = threading.local()
        self._local.bound = True
        self.capability = (self._attribute(_ATTR_MAJOR), self._attribute(_ATTR_MINOR))
        self.target = f"sm_{self.capability[0]}{self.capability[1]}"
        self.shared_optin = self._attribute(_ATTR_SHARED_OPTIN)
        name = ctypes.create_string_buffer(256)
        call("cuDeviceGetName", name, len(name), self.ordinal)
        self.name = name.value.decode()

    def _attribute(self, attr: int) -> int:
        v = c_int()
        call("cuDeviceGetAttribute", byref(v), attr, self.ordinal)
        return v.value

    def bind(self) -> None:
        """Make this device's context current in the calling thread (once per thread)."""
        if not getattr(self._local, "bound", False):
            call("cuCtxSetCurrent", self.context)
            self._local.bound = True

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        free, total = c_size_t(), c_size_t()
        self.bind()
        call("cuMemGetInfo_v2", byref(free), byref(total))
        return free.value, total.value

    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Uninitialized device memory (``nbytes`` 0: no memory, ``ptr`` 0)."""
        return DeviceBuffer(self, int(nbytes))

    def upload(self, buf: DeviceBuffer, array: np.ndarray, offset: int = 0) -> None:
        """Copy ``array`` (C-contiguous) into ``buf`` at byte ``offset``."""
        _fits(buf, array, offset, "upload")
        if array.nbytes:
            self.bind()
            call("cuMemcpyHtoD_v2", buf.ptr + offset, array.ctypes.data, array.nbytes)

    def download(self, buf: DeviceBuffer, array: np.ndarray, offset: int = 0) -> None:
        """Fill ``array`` (C-contiguous, writeable) from ``buf`` at byte ``offset``; waits for
        the work issued before it."""
        _fits(buf, array, offset, "download")
        if not array.flags.writeable:
            raise LaminaError("download: the destination array is read-only")
        if array.nbytes:
            self.bind()
            call("cuMemcpyDtoH_v2", array.ctypes.data, buf.ptr + offset, array.nbytes)

    def copy(self, dst, src, nbytes: int) -> None:
        """Copy ``nbytes`` from ``src`` to ``dst`` on the device (each a DeviceBuffer or a
        device address)."""
        for b in (dst, src):
            if isinstance(b, DeviceBuffer) and nbytes > b.nbytes:
                raise LaminaError(f"copy: {nbytes} bytes do not fit {b!r}")
        if nbytes:
            self.bind()
            call("cuMemcpyDtoD_v2", _address(dst), _address(src), nbytes)

    def memset(self, buf: DeviceBuffer, value: int = 0) -> None:
        """Set every byte of ``buf`` to ``value``."""
        if buf.nbytes:
            self.bind()
            call("cuMemsetD8_v2", buf.ptr, value, buf.nbytes)

    def load_module(self, cubin: bytes) -> Module:
        return Module(self, cubin)

    def prepare(self, fn: Function, grid, block, shared: int,
                params: list[tuple[type, int]]) -> Launch:
        """A launch of ``fn`` (grid and block: 1 to 3 dimensions; ``shared``: bytes of dynamic
        shared memory; ``params``: (ctypes type, value) per kernel parameter), to issue later."""
        return Launch(fn, grid, block, shared, params)

    def launch(self, fn: Function, grid, block, shared: int,
               params: list[tuple[type, int]]) -> None:
        """Launch ``fn`` now (asynchronously, on the default stream); see ``prepare``."""
        self.prepare(fn, grid, block, shared, params)()

    def synchronize(self) -> None:
        """Wait for all work issued so far; a failed kernel raises here."""
        self.bind()
        call("cuCtxSynchronize")

    def timer(self) -> EventTimer:
        return EventTimer(self)

    def __repr__(self) -> str:
        return f"<Device {self.ordinal}: {self.name} ({self.target})>"


def _address(b) -> int:
    return b.ptr if isinstance(b, DeviceBuffer) else int(b)


def _fits(buf: DeviceBuffer, array: np.ndarray, offset: int, what: str) -> None:
    if not array.flags.c_contiguous:
        raise LaminaError(f"{what}: the host array must be C-contiguous")
    if offset < 0 or offset + array.nbytes > buf.nbytes:
        raise LaminaError(f"{what}: {array.nbytes} bytes at offset {offset} do not fit "
                          f"{buf!r}")
