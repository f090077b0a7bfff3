"""The compile driver: the one module that knows the whole pipeline.

    trace (frontend) -> passes (PassManager) -> backend.compile -> runtime.Executable

``lm.compile(fn)`` returns a :class:`CompiledFunction`, which specializes ``fn`` per input
signature (shapes and dtypes) and per train/eval mode of the modules its trace read, caches each
variant and calls it with numpy arrays.

Threads: compiling is guarded per function (one compile per new variant, however many threads
ask for it at once) and, across functions, around the backend's compile (LLVM's global state);
calls are serialized by the executables' state locks (``runtime.executable``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
import weakref

import numpy as np

from lamina.backends import get_backend
from lamina.frontend import transforms
from lamina.frontend.trace import arg_names, current, function_name, mode_epoch, trace_function
from lamina.ir import config
from lamina.ir.errors import LaminaError, SignatureError
from lamina.ir.printer import print_graph
from lamina.ir.types import TensorType, type_of
from lamina.ir.verify import verify
from lamina.passes import DEFAULT, PassManager
from lamina.runtime import artifact
from lamina.runtime.executable import Executable, signature_key

DEFAULT_BACKEND = "llvm"  # the CPU backend; "numpy" is the reference interpreter
MAX_VARIANTS_BEFORE_WARNING = 8

# Backends compile one graph at a time: LLVM's global context and the disk cache's index are
# shared by every function, and compiling is rare enough that waiting costs little.
_backend_lock = threading.Lock()


class CompiledFunction:
    """``fn`` compiled for ``backend``; call it with numpy arrays, get numpy arrays back.

    >>> import numpy as np, lamina as lm
    >>> f = lm.compile(lambda x, w: lm.tanh(x @ w).sum(axis=1))
    >>> f(np.ones((2, 3), np.float32), np.zeros((3, 4), np.float32))
    array([0., 0.], dtype=float32)
    >>> f.stages()[:3]
    ['traced', 'decompose', 'autodiff']
    """

    def __init__(self, fn, backend: str = DEFAULT_BACKEND, name: str | None = None,
                 passes=None, static_argnums=()):
        if not callable(fn):
            raise LaminaError(f"lm.compile needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.backend = backend
        get_backend(backend)  # an unknown backend fails here, not at the first call
        self.name = name or function_name(fn)
        self.passes = list(DEFAULT if passes is None else passes)
        self.static_argnums = tuple(static_argnums)
        # (signature, static arguments, modes read) -> variant; modes: ((module, mode), ...)
        self.variants: dict[tuple, Executable] = {}
        # (signature, static arguments) -> [(modes read, variant)], in compile order
        self._guarded: dict[tuple, list[tuple[tuple, Executable]]] = {}
        self._seen: dict[tuple, Executable] = {}  # argument look -> variant (see __call__)
        self._epoch = mode_epoch[0]  # the module-mode epoch _seen was filled under
        self._lock = threading.RLock()  # guards compiling: variants, _guarded, compile_log
        self.compile_log: list[str] = []  # why each variant was compiled
        self._last: Executable | None = None
        functools.update_wrapper(self, fn, updated=())

    # --- calling -----------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        if kwargs:
            args = self._bind(args, kwargs)
        if current() is not None:  # called inside another trace: inline
            return self.fn(*args)
        # The hot path of a training loop: one dict lookup on what the arguments look like,
        # valid while no module changed its train/eval mode (then the slow path checks modes).
        seen = self._seen
        if self._epoch != mode_epoch[0]:
            seen = self._reset_seen()
        try:
            key = tuple(_quick_key(a) for a in args)
            if self.static_argnums:  # their values decide, not just their types
                key = (key, tuple(args[i] for i in self.static_argnums))
            exe = seen.get(key)
        except (TypeError, IndexError):  # a static argument unhashable or missing: the slow
            key, exe = None, None        # path says why
        if exe is None:
            exe = self.lower(*args)
            if key is not None:
                seen[key] = exe
        self._last = exe
        return exe(*self._dynamic(args)) if self.static_argnums else exe(*args)

    def _reset_seen(self) -> dict:
        """A module changed mode: forget which arguments led to which variant (the slow path
        checks every variant's modes and fills it again)."""
        self._epoch = mode_epoch[0]
        self._seen = {}
        return self._seen

    def lower(self, *args) -> Executable:
        """The compiled variant for these arguments (compiled now if new); arrays or
        ``lm.TensorType`` specs. A variant fits when the signature and the static arguments
        match and every module whose mode its trace read still has that mode."""
        self._check_arity(args)
        dyn = self._dynamic(args)
        names = [n for i, n in enumerate(arg_names(self.fn, len(args)))
                 if i not in self.static_argnums]
        types = [type_of(a, f"{self.name}: argument {n!r}") for a, n in zip(dyn, names)]
        base = (signature_key(types), self._static_key(args))
        with self._lock:  # a second thread asking for the same new variant waits for it
            exe = _fitting(self._guarded.get(base, ()))
            if exe is None:
                exe, modes = self._compile(base, args, types)
                self.variants[(*base, modes)] = exe
                self._guarded.setdefault(base, []).append((modes, exe))
            self._last = exe
        return exe

    def _compile(self, base, args, types: list[TensorType]) -> tuple[Executable, tuple]:
        reason = self._why(base, types)
        start = time.perf_counter()
        fn, names = self._traceable(args)
        traced = trace_function(fn, types, self.name, names)
        be = get_backend(self.backend)
        pm = PassManager(self.passes + list(be.passes))
        graph, stages = pm.run(traced.graph)
        verify(graph, allow_grad=False, allow_composite=False)
        with _backend_lock:
            program = be.compile(graph, dump_dir=pm.dump_dir, first_index=len(stages))
        exe = Executable(graph, program, graph.variables, traced.out_tree, self.backend, stages)
        msg = f"compiled {self.name} for ({_format_types(names, types)}) on {self.backend} " \
              f"in {(time.perf_counter() - start) * 1e3:.1f} ms: {reason}"
        self.compile_log.append(msg)
        if config.debug >= 1:
            print(f"lamina: {msg}", file=sys.stderr)
        if len(self.variants) + 1 == MAX_VARIANTS_BEFORE_WARNING:
            print(f"lamina: warning: {self.name} has been compiled for "
                  f"{MAX_VARIANTS_BEFORE_WARNING} different signatures; pad or bucket input "
                  "shapes to avoid recompiling", file=sys.stderr)
        return exe, tuple(traced.modes)

    def _why(self, base, types) -> str:
        """Which part of the signature (or which module's mode) differs from the nearest
        compiled variant."""
        if not self.variants:
            return "first call"
        if base in self._guarded:
            modes = self._guarded[base][-1][0]
            diffs = [f"{type(m).__name__}.training {old} -> {m.training}"
                     for m, old in modes if m.training != old]
            if diffs:
                return "module mode changed (train()/eval()): " + "; ".join(diffs)
        sig, static = base
        for (old_sig, old_static, _), exe in self.variants.items():
            if old_static != static:
                return f"static arguments changed: {old_static} -> {static}"
            if len(old_sig) != len(sig):
                return f"{len(sig)} arguments instead of {len(old_sig)}"
            diffs = [f"argument {n!r}: {t_old} -> {t}"
                     for (n, t_old), t in zip(exe.signature, types) if t_old != t]
            if diffs:
                return "; ".join(diffs)
        return "new signature"

    # --- static arguments --------------------------------------------------------------------

    def _check_arity(self, args):
        for i in self.static_argnums:
            if not -len(args) <= i < len(args):
                raise SignatureError(f"{self.name}: static argument {i} is missing (called "
                                     f"with {len(args)} argument(s))")
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return  # no signature to check against (a builtin)
        try:
            sig.bind(*args)
        except TypeError as e:
            params = [p.name for p in sig.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            raise SignatureError(f"{self.name}() takes {len(params)} argument(s) "
                                 f"({', '.join(params)}), got {len(args)}: {e}") from None

    def _bind(self, args, kwargs):
        try:
            bound = inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as e:
            raise SignatureError(f"{self.name}: {e}") from None
        bound.apply_defaults()
        if bound.kwargs:
            raise SignatureError(f"{self.name}: keyword-only arguments are not supported")
        return bound.args

    def _dynamic(self, args):
        return [a for i, a in enumerate(args) if i not in self.static_argnums]

    def _static_key(self, args):
        try:
            key = tuple(args[i] for i in self.static_argnums)
            hash(key)
        except (IndexError, TypeError):
            raise SignatureError(f"{self.name}: static arguments {self.static_argnums} must "
                                 "be given and hashable") from None
        return key

    def _traceable(self, args):
        names = arg_names(self.fn, len(args))
        if not self.static_argnums:
            return self.fn, names
        static = {i: args[i] for i in self.static_argnums}

        def with_static(*dyn):
            it = iter(dyn)
            return self.fn(*[static[i] if i in static else next(it) for i in range(len(args))])

        return with_static, [n for i, n in enumerate(names) if i not in static]

    # --- inspecting ----------------------------------------------------------------------------

    def _variant(self) -> Executable:
        if self._last is None:
            raise LaminaError(f"{self.name} has not been compiled yet: call it (or "
                              ".lower(*example_args)) first")
        return self._last

    def stages(self) -> list[str]:
        """Names of the IR stages of the most recently used variant, in pipeline order."""
        return [s.name for s in self._variant().stages]

    def ir(self, stage: str | None = None) -> str:
        """The IR text after ``stage`` (default: the final graph) of the most recent variant."""
        exe = self._variant()
        if stage is None:
            return print_graph(exe.graph)
        for i, s in enumerate(exe.stages):
            if s.name == stage:
                return s.text(i)
        raise LaminaError(f"no stage {stage!r}; stages are {[s.name for s in exe.stages]}")

    def profile(self, *args, repeat: int = 20) -> str:
        """Time every kernel of the compiled step over ``repeat`` calls; returns a table.

        Runs a separately compiled, instrumented copy on copies of the state, so profiling a
        training step does not train the model. CPU (llvm) backend only.

        >>> import numpy as np, lamina as lm
        >>> f = lm.compile(lambda x: lm.softmax(x * 2.0), backend="llvm")
        >>> table = f.profile(np.ones((64, 32), np.float32), repeat=3)
        >>> print(table.splitlines()[1].split())
        ['kernel', 'kind', 'us/call', 'share', 'GB/s', 'GFLOP/s']
        >>> table.splitlines()[3].split()[:2]
        ['@fused_mul_max_sub_exp_sum_etc', 'row']
        """
        if self.backend != "llvm":
            raise LaminaError(f"profile() needs backend='llvm' (this function uses "
                              f"{self.backend!r})")
        from lamina.backends.llvm.profile import profile_table
        from lamina.ir.variable import Variable

        exe = self.lower(*args)
        with _backend_lock:
            program = get_backend(self.backend).compile(exe.graph, profile=True)
        scratch = {k: Variable(v.numpy(), k) for k, v in exe.variables.items()}
        probe = Executable(exe.graph, program, scratch, exe.out_tree, self.backend)
        dyn = self._dynamic(args)
        probe(*dyn)  # warm up
        program.reset_profile()
        for _ in range(repeat):
            probe(*dyn)
        return profile_table(program.profile_rows(),
                             f"profile of {self.name} over {repeat} call(s)")

    def save(self, path: str) -> None:
        """Write the compiled variants, with their state, to one artifact file.

        One variant per signature: where the function was compiled for several module modes
        (train and eval), the one for the modules' current modes (``model.eval()`` before
        saving ships inference), else the most recent.
        """
        from lamina import __version__

        with self._lock:
            chosen = [_fitting(group) or group[-1][1] for group in self._guarded.values()]
        artifact.save(path, self.name, self.backend, chosen, __version__)

    def __repr__(self) -> str:
        return f"<lamina compiled function {self.name} [{self.backend}], " \
               f"{len(self.variants)} variant(s)>"


def _fitting(group) -> Executable | None:
    """The variant of ``group`` ([(modes, variant)]) whose modules still have the modes its
    trace saw; None if none."""
    for modes, exe in group:
        if all(m.training == mode for m, mode in modes):
            return exe
    return None


def _quick_key(a):
    """What decides a variant, cheaply: an array's (or numpy scalar's) shape and dtype, a
    Python number's type, a static argument's value (hashable)."""
    if isinstance(a, (np.ndarray, np.generic)):  # before float: np.float64 is a float
        return (a.shape, a.dtype.char)
    if isinstance(a, (bool, int, float)):
        return type(a)
    return ("other", type(a), a)


def _format_types(names, types) -> str:
    return ", ".join(f"{n}: {t}" for n, t in zip(names, types))


def compile(fn=None, *, backend: str = DEFAULT_BACKEND, name: str | None = None, passes=None,
            static_argnums=()):
    """Compile ``fn`` for ``backend``; usable as ``lm.compile(f)`` or ``@lm.compile(backend=...)``.

    Each new input signature (shapes, dtypes, static arguments) traces and compiles a new
    variant; ``static_argnums`` names arguments passed as Python values at trace time. So does
    a change of the train/eval mode of a module the trace read (``model.eval()`` switches
    dropout off in the next call; switching back reuses the variant compiled before).

    **Python values are read once, while tracing.** Globals, closure variables and attributes
    that ``fn`` reads (a learning rate in a global, a flag, a list's length) are frozen into the
    compiled graph as constants, as in JAX: changing them later does not change the compiled
    function. Pass a value that changes as an argument (a Python number becomes a 0-d input,
    so a new value does not even recompile):

    >>> import numpy as np, lamina as lm
    >>> scale = 2.0
    >>> f = lm.compile(lambda x: x * scale)
    >>> f(np.ones(2, np.float32))
    array([2., 2.], dtype=float32)
    >>> scale = 3.0                      # too late: the graph holds 2.0
    >>> f(np.ones(2, np.float32))
    array([2., 2.], dtype=float32)
    >>> g = lm.compile(lambda x, scale: x * scale)
    >>> g(np.ones(2, np.float32), 3.0)
    array([3., 3.], dtype=float32)

    Parameters and optimizer state are not frozen: they are state, read at every call.

    **Threads.** A compiled function may be called from several threads. Calls are serialized
    per set of shared state: calls of one function run one at a time, and so do the calls of
    every function that shares a parameter (or any Variable) with it, so ``train_step`` and
    ``predict`` over one model never see each other halfway, and each sees the state of some
    serial order of the calls. Functions over unrelated state run in parallel. A new variant
    is compiled once however many threads ask for it. Reading or assigning parameters directly
    (``model.state_dict()``, ``load_state_dict``) while a step runs in another thread is not
    synchronized: do that between steps.
    """
    if fn is None:
        return lambda f: CompiledFunction(f, backend, name, passes, static_argnums)
    return CompiledFunction(fn, backend, name, passes, static_argnums)


def load(path: str) -> artifact.LoadedFunction:
    """Load an artifact written by ``CompiledFunction.save``; runs without the source."""
    from lamina import __version__

    return artifact.load(path, __version__)


# --- eager use of transforms: lm.grad(f)(numpy arrays) compiles on the fly ----------------------

_eager_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run_compiled(fn, args):
    compiled = _eager_cache.get(fn)
    if compiled is None:
        compiled = _eager_cache[fn] = CompiledFunction(fn)
    return compiled(*args)


transforms._run_compiled = _run_compiled
