"""Ahead-of-time compilation of rendered kernels with Triton's compiler: PTX and cubin for a named
target ("sm_80", "sm_90", ...), on any machine, GPU or not.

Triton reads a kernel's Python source (``inspect``), so each rendered module is written to a file
under the compile cache directory (``<cache>/triton/src``) and imported from there. Compiled
binaries are cached by source, target and Triton version (``runtime/cache.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import warnings

from lamina.backends.triton.cuda import ptx_params
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir.errors import LaminaError
from lamina.passes.manager import write_atomic
from lamina.runtime import cache as cache_mod

DEFAULT_TARGETS = ("sm_80", "sm_90")
STATS = {"compiled": 0, "cache_hits": 0}


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        raise LaminaError("the triton backend needs Triton: pip install 'lamina[gpu]' "
                          "(or pip install triton)") from None
    return triton.__version__


def _source_dir() -> str:
    base = cache_mod.cache_dir() or os.path.join(tempfile.gettempdir(), "lamina-triton")
    d = os.path.join(base, "triton", "src")
    os.makedirs(d, exist_ok=True)
    return d


_MODULES: dict[tuple[str, bool], object] = {}


@contextlib.contextmanager
def _interpret_env(on: bool):
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def load_function(src: KernelSource, interpret: bool = False):
    """The ``@triton.jit`` function of ``src`` (under Triton's interpreter if ``interpret``)."""
    key = (src.source, interpret)
    fn = _MODULES.get(key)
    if fn is not None:
        return fn
    triton_version()
    digest = hashlib.sha256(src.source.encode()).hexdigest()[:16]
    path = os.path.join(_source_dir(), f"{src.name}_{digest}.py")
    if not os.path.exists(path):
        write_atomic(path, src.source)
    modname = f"lamina_triton_{src.name}_{digest}_{'i' if interpret else 'c'}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module  # triton resolves helper functions through the module
    with _interpret_env(interpret), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Triton's notice about FP fusion
        spec.loader.exec_module(module)
    fn = getattr(module, src.name)
    _MODULES[key] = fn
    return fn


def parse_target(target: str) -> int:
    m = re.fullmatch(r"sm_?(\d+)a?", target.strip())
    if not m:
        raise LaminaError(f"unknown GPU target {target!r}: use names like 'sm_80' or 'sm_90'")
    return int(m.group(1))


def _parts(src: KernelSource, target: str) -> dict[str, str]:
    from lamina import __version__

    text = json.dumps({"source": src.source, "signature": src.signature,
                       "warps": src.num_warps, "stages": src.num_stages,
                       "constexprs": src.constexprs}, sort_keys=True)
    return cache_mod.key_parts(text, "triton-kernel", {"lamina": __version__,
                                                       "triton": triton_version(),
                                                       "gpu": target}, "")


def compile_source(src: KernelSource, target: str) -> KernelBinary:
    """PTX and cubin of ``src`` for ``target``, through Triton's compiler (no GPU needed)."""
    cache = cache_mod.Cache()
    parts = _parts(src, target)
    blob = cache.get(f"triton-{src.name}-{target}", parts)
    if blob is not None:
        try:
            STATS["cache_hits"] += 1
            return KernelBinary.from_json(json.loads(blob))
        except (ValueError, TypeError, KeyError):
            pass  # a damaged entry: compile again
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = load_function(src, interpret=False)
    arch = parse_target(target)
    signature = dict(src.signature)
    for k in src.constexprs:
        signature[k] = "constexpr"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=dict(src.constexprs)),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": src.num_warps, "num_stages": src.num_stages,
                         "enable_fp_fusion": True})
    except Exception as e:  # noqa: BLE001 (any of Triton's errors: they name the position)
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        raise LaminaError(f"Triton could not compile kernel {src.name} for {target}: "
                          f"{type(e).__name__}: {e}{cause}\n--- source ---\n{src.source}") \
            from None
    md = compiled.metadata
    ptx = compiled.asm["ptx"]
    binary = KernelBinary(
        name=md.name, target=f"sm_{arch}", cubin=compiled.asm["cubin"], ptx=ptx,
        num_warps=md.num_warps, shared=md.shared, params=ptx_params(ptx, md.name),
        global_scratch_size=getattr(md, "global_scratch_size", 0) or 0,
        global_scratch_align=getattr(md, "global_scratch_align", 1) or 1,
        profile_scratch_size=getattr(md, "profile_scratch_size", 0) or 0,
        profile_scratch_align=getattr(md, "profile_scratch_align", 1) or 1,
        triton_version=triton.__version__)
    STATS["compiled"] += 1
    cache.put(f"triton-{src.name}-{target}", parts, json.dumps(binary.to_json()).encode())
    return binary


def compile_all(sources: list[KernelSource], targets) -> dict[str, list[KernelBinary]]:
    """Binaries of every source (prologues included) for every target: name -> list."""
    out: dict[str, list[KernelBinary]] = {}
    for src in sources:
        for s in [*src.prologue, src]:
            out[s.name] = [compile_source(s, t) for t in targets]
    return out
