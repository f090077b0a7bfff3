"""The thread pool of the CPU backend: work split into chunks that whoever runs claims.

JIT code (kernels, the GEMM) hands a job to the pool with one call::

    void lamina_pool_run_v1(void (*fn)(i8* data, i64 chunk, i64 slot), i8* data,
                            i64 nchunks, i32 nthreads)

which returns when ``fn(data, c, slot)`` has run exactly once for every chunk ``c`` in
``[0, nchunks)``. ``slot`` names the participant running the chunk, ``0 <= slot < nthreads``,
and no two participants of one job share a slot (the GEMM keeps one packing buffer per slot).
The submitting thread is slot 0 and works too; ``nthreads - 1`` worker threads are slots 1....

Why not ``GOMP_parallel``: its team ends with a barrier, so a parallel region takes as long as
its slowest thread, and a thread that another process has pushed off its core holds every
kernel for a scheduler time slice (the MLP step ran 17x slower beside one busy process). Here
nobody ever waits for a thread that is not running:

* **Claiming.** The pool's job word ``state`` packs a generation (bits 24..63), the next
  unclaimed chunk (bits 12..23) and the chunk count (bits 0..11). A participant claims chunk
  ``next`` with a compare-and-swap of the whole word, so a claim can only succeed on the job
  (generation) it read, and only while chunks are left. A thread that is not running holds no
  chunk: whoever runs takes the rest.
* **Finishing.** The submitter, out of chunks to claim, waits until ``done`` (chunks finished)
  reaches the count: it waits only for chunks that other participants already claimed, and so
  are running (or were, when their thread lost its core: then the submitter soon sleeps, and
  leaves its core to that thread).
* **Idle workers** spin for ``WORKER_SPIN_NS`` on the job counter ``seq`` (the next kernel of a
  step comes microseconds later), then sleep on it with a futex: an idle pool costs no CPU.
  A submitter wakes sleepers only when there are any.
* **One job at a time.** A submitter takes the pool with a compare-and-swap of ``busy``; one
  that finds it busy (another Python thread's function, or a chunk that submits a job of its
  own) runs its chunks itself, in order. Nothing ever waits for the pool to become free.
* **fork().** A child process has the parent's memory but none of its threads: the pool
  records the pid it was set up in, and the first job in a new process resets it (workers are
  started again on demand).
* **Exit.** Workers are detached threads with every signal blocked; a process exiting while
  they sleep in the futex just ends them. The engine holding this code is never freed (see
  ``library``), so no worker can run unmapped code during interpreter shutdown.

NOTE (memory ordering, the argument in one place; the comments in the IR refer to it):
(1) The submitter writes the job descriptor (fn, data, limit) and resets ``done``, then
    publishes the new generation with a release store of ``state``. A participant loads
    ``state`` with acquire (a value written by the submitter or by a claiming CAS of the same
    generation: CAS are read-modify-writes, so they continue the submitter's release
    sequence), then reads the descriptor, then CASes ``state`` from the value it loaded.
(2) If that CAS succeeds, ``state`` held that same value between the load and the CAS (within
    a generation ``next`` only grows; the generation only grows; 2^40 jobs cannot pass while
    one thread sits between two instructions). So the job had an unclaimed chunk all along,
    could not have finished, and the submitter had not started writing the next descriptor:
    the descriptor read was this job's. Formally: the next descriptor is written after the
    submitter's acquire load sees ``done == n``, which happens after this participant's
    release increment of ``done`` for the chunk it claimed, which comes after its reads.
(3) The chunk count travels inside ``state``, not in the descriptor, because a participant
    must decide "chunks left?" from the very value its CAS checks.
(4) ``done``: each participant adds 1 (seq_cst, so also release) after its chunk; the
    submitter's acquire load that sees the count synchronizes with every one of them, so it
    sees every chunk's writes. Sleeping on ``done`` is a Dekker pair: the submitter stores
    ``waiting = 1`` then loads ``done``; a participant increments ``done`` then loads
    ``waiting``; all seq_cst, so at least one of them sees the other's write: either the
    submitter does not sleep, or the last participant wakes it. The futex itself rechecks the
    value in the kernel, so a change between the check and the sleep is never lost.
(5) Workers sleep on ``seq`` with the same pattern: a worker increments ``sleepers`` then
    rechecks ``seq``; a submitter increments ``seq`` then loads ``sleepers``.
(6) Deadlock: the submitter waits only for ``done``, and every claimed chunk is run to the end
    by the thread that claimed it (chunks never wait for anything of the pool: a chunk that
    submits a job finds the pool busy and runs it itself). Workers wait only for new jobs.

The pool is compiled once per machine (cached on disk like the GEMM library), loaded once per
process, and its symbols are registered with ``llvm.add_symbol`` for every later engine.
Artifacts carry its object code, so loading one compiles nothing.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading

from llvmlite import binding as llvm
from llvmlite import ir

from lamina.backends.llvm import jit

ABI = 1  # part of the symbol names: bump when the calling convention changes
RUN = f"lamina_pool_run_v{ABI}"
INFO = f"lamina_pool_info_v{ABI}"
SYMBOLS = (RUN, INFO)

MAX_CHUNKS = (1 << 12) - 1   # chunks of one job (more run on the submitting thread alone)
MAX_THREADS = 256            # participants of one job
# Spinning. An idle worker spins WORKER_SPIN_NS for the next job: the next kernel of a step
# follows within microseconds, the next step after Python's call overhead, and the serial
# kernels in between (small GEMMs) take up to a few hundred microseconds; waking a sleeping
# worker takes 50-100 us on this (virtual) machine, longer than many kernels. Every 64 rounds
# it offers its core (sched_yield): a submitter queued on that core runs at once instead of
# after the spin (beside one busy process, 2 cores, MLP step: 1 ms spins without yielding
# made a step 17.6-19 ms, with yielding 14 ms; 50 and 300 us with yielding 12.5-14.3 ms).
# A submitter out of chunks spins for the chunks others claimed, twice as long as the longest
# chunk it ran itself (within WAIT_SPIN_MIN_NS..WAIT_SPIN_MAX_NS), then sleeps: a claimed chunk
# that takes longer is likely held by a thread that lost its core, which may get one back
# sooner if the submitter leaves its own. While spinning it yields only when a worker holding
# a chunk was last seen on its CPU; never otherwise: beside a busy process that would hand the
# busy process a time slice.
WORKER_SPIN_NS = 300_000
WAIT_SPIN_MIN_NS = 20_000
WAIT_SPIN_MAX_NS = 2_000_000
WORKER_YIELD = True

_i1, _i8, _i32, _i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_i8p = _i8.as_pointer()
_void = ir.VoidType()

# void fn(i8* data, i64 chunk, i64 slot)
CHUNK_TYPE = ir.FunctionType(_void, [_i8p, _i64, _i64])
RUN_TYPE = ir.FunctionType(_void, [CHUNK_TYPE.as_pointer(), _i8p, _i64, _i32])
INFO_TYPE = ir.FunctionType(_void, [_i64.as_pointer()])

_GEN_SHIFT, _NEXT_SHIFT, _FIELD = 24, 12, (1 << 12) - 1
_SIG_SETMASK = 2
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}


def declare_run(module: ir.Module) -> ir.Function:
    """The pool's entry, declared in another module (kernels, the GEMM) to call it."""
    if RUN in module.globals:
        return module.globals[RUN]
    return ir.Function(module, RUN_TYPE, RUN)


# --- the module --------------------------------------------------------------------------------


def _c(t, v):
    return ir.Constant(t, v)


def _umax(b, x, y):
    return b.select(b.icmp_unsigned(">", x, y), x, y)


def _umin(b, x, y):
    return b.select(b.icmp_unsigned("<", x, y), x, y)


def _align(v: ir.GlobalVariable) -> int:
    t = v.type.pointee
    return t.width // 8 if isinstance(t, ir.IntType) else 8


class _Builder:
    """Emits the pool's functions into one module."""

    def __init__(self, m: ir.Module):
        self.m = m
        arch = jit.host().triple.split("-")[0]
        if arch not in _SYS_FUTEX:
            raise NotImplementedError(f"lamina's thread pool: no futex number for {arch}")
        self.sys_futex = _SYS_FUTEX[arch]
        g = self.g = {}
        # NOTE: 64-byte alignment puts every global on a cache line of its own: the words all
        # participants hammer (state, done) do not share a line with the quieter ones.
        for name, t in (("state", _i64), ("fn", _i8p), ("data", _i8p), ("limit", _i64),
                        ("done", _i32), ("waiting", _i32), ("seq", _i32),
                        ("sleepers", _i32), ("busy", _i32), ("nworkers", _i32),
                        ("failed", _i32), ("pid", _i32), ("jobs", _i64), ("inline", _i64)):
            v = ir.GlobalVariable(m, t, "pool.g." + name)
            v.linkage = "internal"
            v.initializer = _c(t, None)
            v.align = 64
            g[name] = v
        # where[s * 8] = 1 + the CPU worker s runs a chunk on, 0 when it runs none (one cache
        # line per slot: only its worker writes it)
        wt = ir.ArrayType(_i64, MAX_THREADS * 8)
        v = ir.GlobalVariable(m, wt, "pool.g.where")
        v.linkage = "internal"
        v.initializer = ir.Constant(wt, None)
        v.align = 64
        g["where"] = v
        self.timespec = ir.LiteralStructType([_i64, _i64])
        self.fn_pause = None
        if arch == "x86_64":
            self.fn_pause = ir.Function(m, ir.FunctionType(_void, []), "llvm.x86.sse2.pause")
        elif arch == "aarch64":
            self.fn_pause = ir.Function(m, ir.FunctionType(_void, [_i32]), "llvm.aarch64.hint")
        self.syscall = ir.Function(m, ir.FunctionType(_i64, [_i64], var_arg=True), "syscall")
        self.getpid = ir.Function(m, ir.FunctionType(_i32, []), "getpid")
        self.sched_yield = ir.Function(m, ir.FunctionType(_i32, []), "sched_yield")
        self.getcpu = ir.Function(m, ir.FunctionType(_i32, []), "sched_getcpu")
        self.clock = ir.Function(m, ir.FunctionType(_i32, [_i32, self.timespec.as_pointer()]),
                                 "clock_gettime")
        start_t = ir.FunctionType(_i8p, [_i8p]).as_pointer()
        self.pthread_create = ir.Function(
            m, ir.FunctionType(_i32, [_i64.as_pointer(), _i8p, start_t, _i8p]),
            "pthread_create")
        self.pthread_detach = ir.Function(m, ir.FunctionType(_i32, [_i64]), "pthread_detach")
        self.sigfillset = ir.Function(m, ir.FunctionType(_i32, [_i8p]), "sigfillset")
        self.sigmask = ir.Function(m, ir.FunctionType(_i32, [_i32, _i8p, _i8p]),
                                   "pthread_sigmask")

    # small pieces ------------------------------------------------------------------------------
    def fn(self, name, ret, args, internal=True):
        f = ir.Function(self.m, ir.FunctionType(ret, args), name)
        if internal:
            f.linkage = "internal"
        return f, ir.IRBuilder(f.append_basic_block("entry"))

    def load(self, b, name, order="monotonic"):
        v = self.g[name]
        return b.load_atomic(v, order, _align(v))

    def store(self, b, name, value, order="monotonic"):
        v = self.g[name]
        b.store_atomic(value, v, order, _align(v))

    def pause(self, b):
        if self.fn_pause is None:
            return
        b.call(self.fn_pause, [] if not self.fn_pause.args else [_c(_i32, 1)])

    def futex(self, b, word, op, val):
        addr = b.ptrtoint(self.g[word], _i64)
        b.call(self.syscall, [_c(_i64, self.sys_futex), addr, _c(_i64, op), b.zext(val, _i64),
                              _c(_i64, 0), _c(_i64, 0), _c(_i64, 0)])

    def emit(self):
        self.f_now = self.now()
        self.f_inline = self.inline()
        self.f_participate = self.participate()
        self.f_worker = self.worker()
        self.f_wait = self.wait_done()
        self.f_process = self.own_process()
        self.f_start = self.start_workers()
        self.run()
        self.info()

    # functions ---------------------------------------------------------------------------------
    def now(self):
        """i64 now(): CLOCK_MONOTONIC in ns (vDSO: tens of ns; called every 64 spins)."""
        f, b = self.fn("pool.now", _i64, [])
        ts = b.alloca(self.timespec)
        b.call(self.clock, [_c(_i32, 1), ts])
        sec = b.load(b.gep(ts, [_c(_i32, 0), _c(_i32, 0)]))
        nsec = b.load(b.gep(ts, [_c(_i32, 0), _c(_i32, 1)]))
        b.ret(b.add(b.mul(sec, _c(_i64, 1_000_000_000)), nsec))
        return f

    def inline(self):
        """void inline(fn, data, n): every chunk on this thread, in order, as slot 0."""
        f, b = self.fn("pool.inline", _void, [CHUNK_TYPE.as_pointer(), _i8p, _i64])
        fn, data, n = f.args
        head, body, done = (f.append_basic_block(x) for x in ("head", "body", "done"))
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        c = b.phi(_i64)
        c.add_incoming(_c(_i64, 0), pre)
        b.cbranch(b.icmp_signed("<", c, n), body, done)
        b.position_at_end(body)
        b.call(fn, [data, c, _c(_i64, 0)])
        c.add_incoming(b.add(c, _c(_i64, 1)), body)
        b.branch(head)
        b.position_at_end(done)
        b.ret_void()
        return f

    def participate(self):
        """i64 participate(i64 slot): claim and run chunks of the current job until none are
        left (or the job has no place for this slot); returns the longest time one of them
        took (ns). A worker marks the CPU it runs a chunk on in `where`. NOTE (1)-(4)."""
        f, b = self.fn("pool.participate", _i64, [_i64])
        (slot,) = f.args
        blocks = {x: f.append_basic_block(x) for x in ("loop", "check", "claim", "run",
                                                       "last", "wake", "out")}
        longest = b.alloca(_i64)
        b.store(_c(_i64, 0), longest)
        mark = b.gep(self.g["where"], [_c(_i64, 0), b.mul(slot, _c(_i64, 8))])
        worker = b.icmp_signed(">", slot, _c(_i64, 0))
        b.branch(blocks["loop"])
        b.position_at_end(blocks["loop"])
        s = self.load(b, "state", "acquire")
        n = b.and_(s, _c(_i64, _FIELD))
        nxt = b.and_(b.lshr(s, _c(_i64, _NEXT_SHIFT)), _c(_i64, _FIELD))
        b.cbranch(b.icmp_unsigned("<", nxt, n), blocks["check"], blocks["out"])
        b.position_at_end(blocks["check"])
        # NOTE (2): read between the acquire load and the CAS that validates them.
        limit = self.load(b, "limit")
        fn = b.bitcast(self.load(b, "fn"), CHUNK_TYPE.as_pointer())
        data = self.load(b, "data")
        b.cbranch(b.icmp_signed("<", slot, limit), blocks["claim"], blocks["out"])
        b.position_at_end(blocks["claim"])
        res = b.cmpxchg(self.g["state"], s, b.add(s, _c(_i64, 1 << _NEXT_SHIFT)), "acq_rel",
                        "acquire")
        b.cbranch(b.extract_value(res, 1), blocks["run"], blocks["loop"])
        b.position_at_end(blocks["run"])
        with b.if_then(worker):
            cpu = b.sext(b.call(self.getcpu, []), _i64)
            b.store_atomic(b.add(cpu, _c(_i64, 1)), mark, "monotonic", 8)
        t0 = b.call(self.f_now, [])
        b.call(fn, [data, nxt, slot])
        took = b.sub(b.call(self.f_now, []), t0)
        b.store(_umax(b, b.load(longest), took), longest)
        with b.if_then(worker):
            b.store_atomic(_c(_i64, 0), mark, "monotonic", 8)
        old = b.atomic_rmw("add", self.g["done"], _c(_i32, 1), "seq_cst")
        finished = b.icmp_unsigned("==", b.zext(b.add(old, _c(_i32, 1)), _i64), n)
        b.cbranch(finished, blocks["last"], blocks["loop"])
        b.position_at_end(blocks["last"])
        # NOTE (4): the last chunk's finisher wakes a submitter that went to sleep.
        w = self.load(b, "waiting", "seq_cst")
        b.cbranch(b.icmp_unsigned("!=", w, _c(_i32, 0)), blocks["wake"], blocks["out"])
        b.position_at_end(blocks["wake"])
        self.futex(b, "done", _FUTEX_WAKE_PRIVATE, _c(_i32, 1))
        b.branch(blocks["out"])
        b.position_at_end(blocks["out"])
        b.ret(b.load(longest))
        return f

    def spin_until(self, f, b, changed, budget_ns, done_block, sleep_block, on_clock=None):
        """Spin (with pause) until ``changed(b)`` is true -> done_block, or ``budget_ns`` (a
        constant or a value) has passed -> sleep_block. The clock is read every 64 rounds,
        after ``on_clock(b)`` when given."""
        head, tick, clock = (f.append_basic_block(x) for x in ("spin", "tick", "clock"))
        t0 = b.call(self.f_now, [])
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(_i64)
        i.add_incoming(_c(_i64, 0), pre)
        b.cbranch(changed(b), done_block, tick)
        b.position_at_end(tick)
        self.pause(b)
        i1 = b.add(i, _c(_i64, 1))
        i.add_incoming(i1, tick)
        b.cbranch(b.icmp_unsigned("==", b.and_(i1, _c(_i64, 63)), _c(_i64, 0)), clock, head)
        b.position_at_end(clock)
        if on_clock is not None:
            on_clock(b)
        i.add_incoming(i1, b.block)
        budget = budget_ns if isinstance(budget_ns, ir.Value) else _c(_i64, budget_ns)
        late = b.icmp_signed(">", b.sub(b.call(self.f_now, []), t0), budget)
        b.cbranch(late, sleep_block, head)

    def worker(self):
        """i8* worker(i8* slot): run chunks of every job that comes, sleep when none do."""
        f, b = self.fn("pool.worker", _i8p, [_i8p])
        slot = b.ptrtoint(f.args[0], _i64)
        blocks = {x: f.append_basic_block(x) for x in ("loop", "sleep", "recheck", "wait",
                                                       "woke")}
        seq0 = self.load(b, "seq", "acquire")
        entry = b.block
        b.branch(blocks["loop"])
        b.position_at_end(blocks["loop"])
        seen = b.phi(_i32)
        seen.add_incoming(seq0, entry)
        # NOTE: `seen` is read before participating, so a job published while this worker
        # participates (or after) changes seq and is not missed.
        b.call(self.f_participate, [slot])
        got = f.append_basic_block("got")
        self.spin_until(f, b, lambda bb: bb.icmp_unsigned("!=", self.load(bb, "seq", "acquire"),
                                                          seen),
                        WORKER_SPIN_NS, got, blocks["sleep"],
                        on_clock=(lambda bb: bb.call(self.sched_yield, [])) if WORKER_YIELD
                        else None)
        b.position_at_end(got)
        now = self.load(b, "seq", "acquire")
        seen.add_incoming(now, got)
        b.branch(blocks["loop"])
        # sleep: NOTE (5)
        b.position_at_end(blocks["sleep"])
        b.atomic_rmw("add", self.g["sleepers"], _c(_i32, 1), "seq_cst")
        b.branch(blocks["recheck"])
        b.position_at_end(blocks["recheck"])
        cur = self.load(b, "seq", "seq_cst")
        b.cbranch(b.icmp_unsigned("!=", cur, seen), blocks["woke"], blocks["wait"])
        b.position_at_end(blocks["wait"])
        self.futex(b, "seq", _FUTEX_WAIT_PRIVATE, seen)  # returns at once if seq != seen
        b.branch(blocks["recheck"])
        b.position_at_end(blocks["woke"])
        b.atomic_rmw("sub", self.g["sleepers"], _c(_i32, 1), "seq_cst")
        seen.add_incoming(cur, blocks["woke"])
        b.branch(blocks["loop"])
        return f

    def wait_done(self):
        """void wait_done(i64 n, i64 longest): until every chunk of the job has finished.
        NOTE (4). Spins for twice the longest chunk this thread ran (within WAIT_SPIN_MIN_NS
        and WAIT_SPIN_MAX_NS): a chunk still running after that is likely held by a thread
        that lost its core. While spinning, it gives up its core (sched_yield) when a worker
        holding a chunk was last seen on the same CPU: that worker is then queued behind us."""
        f, b = self.fn("pool.wait_done", _void, [_i64, _i64])
        n = b.trunc(f.args[0], _i32)
        budget = _umax(b, _c(_i64, WAIT_SPIN_MIN_NS),
                       _umin(b, b.mul(f.args[1], _c(_i64, 2)), _c(_i64, WAIT_SPIN_MAX_NS)))
        out, sleep, recheck, wait = (f.append_basic_block(x)
                                     for x in ("out", "sleep", "recheck", "wait"))
        self.spin_until(f, b, lambda bb: bb.icmp_unsigned(
            "==", self.load(bb, "done", "acquire"), n), budget, out, sleep,
            on_clock=self.yield_to_holder)
        b.position_at_end(sleep)
        self.store(b, "waiting", _c(_i32, 1), "seq_cst")
        b.branch(recheck)
        b.position_at_end(recheck)
        d = self.load(b, "done", "seq_cst")
        b.cbranch(b.icmp_unsigned("==", d, n), out, wait)
        b.position_at_end(wait)
        self.futex(b, "done", _FUTEX_WAIT_PRIVATE, d)
        b.branch(recheck)
        b.position_at_end(out)
        self.store(b, "waiting", _c(_i32, 0))
        b.ret_void()
        return f

    def yield_to_holder(self, b):
        """sched_yield() if a worker running a chunk was last seen on this thread's CPU."""
        f = b.function
        cpu = b.call(self.getcpu, [])
        me = b.add(b.sext(cpu, _i64), _c(_i64, 1))
        limit = self.load(b, "limit")
        hit = b.alloca(_i1)
        b.store(_c(_i1, 0), hit)
        head, body, done = (f.append_basic_block(x) for x in ("holders", "holder", "scanned"))
        pre = b.block
        b.cbranch(b.icmp_signed(">=", cpu, _c(_i32, 0)), head, done)
        b.position_at_end(head)
        s = b.phi(_i64)
        s.add_incoming(_c(_i64, 1), pre)
        b.cbranch(b.icmp_signed("<", s, limit), body, done)
        b.position_at_end(body)
        at = b.gep(self.g["where"], [_c(_i64, 0), b.mul(s, _c(_i64, 8))])
        w = b.load_atomic(at, "monotonic", 8)
        b.store(b.or_(b.load(hit), b.icmp_unsigned("==", w, me)), hit)
        s.add_incoming(b.add(s, _c(_i64, 1)), body)
        b.branch(head)
        b.position_at_end(done)
        with b.if_then(b.load(hit)):
            b.call(self.sched_yield, [])

    def own_process(self):
        """void own_process(): make the pool this process's. After fork() the child sees the
        parent's pool (workers counted, maybe busy) without its threads: the first thread to
        notice claims the reset by swapping the recorded pid for -pid, resets, then publishes
        pid. NOTE: -pid (not a fixed "resetting" value) so that a fork in the middle of a
        reset in the parent leaves the child a value it does not wait for."""
        f, b = self.fn("pool.own_process", _void, [])
        me = b.call(self.getpid, [])
        loop, other, claim, reset, out = (f.append_basic_block(x)
                                          for x in ("loop", "other", "claim", "reset", "out"))
        b.branch(loop)
        b.position_at_end(loop)
        p = self.load(b, "pid", "acquire")
        b.cbranch(b.icmp_signed("==", p, me), out, other)
        b.position_at_end(other)
        spin = f.append_basic_block("spin")
        b.cbranch(b.icmp_signed("==", p, b.neg(me)), spin, claim)
        b.position_at_end(spin)  # another thread of this process is resetting
        self.pause(b)
        b.branch(loop)
        b.position_at_end(claim)
        res = b.cmpxchg(self.g["pid"], p, b.neg(me), "acq_rel", "acquire")
        b.cbranch(b.extract_value(res, 1), reset, loop)
        b.position_at_end(reset)
        # NOTE: no thread of this process can hold `busy` or run a chunk yet: both come after
        # own_process() returned, which needs pid == me, stored below.
        for name in ("nworkers", "failed", "busy", "done", "waiting", "sleepers"):
            self.store(b, name, _c(_i32, 0))
        for k in range(MAX_THREADS):  # marks of the parent's workers
            at = b.gep(self.g["where"], [_c(_i64, 0), _c(_i64, 8 * k)])
            b.store_atomic(_c(_i64, 0), at, "monotonic", 8)
        s = self.load(b, "state")  # keep the generation; no chunk left to claim
        self.store(b, "state", b.and_(s, _c(_i64, ~((1 << _GEN_SHIFT) - 1))))
        self.store(b, "pid", me, "release")
        b.branch(out)
        b.position_at_end(out)
        b.ret_void()
        return f

    def start_workers(self):
        """void start(i32 want): start workers up to `want` (slots 1..want), with every signal
        blocked (they inherit the mask: Python's handlers run on its own threads, and no
        signal interrupts a worker). A failed pthread_create stops trying in this process."""
        f, b = self.fn("pool.start", _void, [_i32])
        (want,) = f.args
        sigs = ir.ArrayType(_i8, 256)  # sigset_t is 128 bytes on Linux; room to spare
        full, old = b.alloca(sigs), b.alloca(sigs)
        tid = b.alloca(_i64)
        b.call(self.sigfillset, [b.bitcast(full, _i8p)])
        b.call(self.sigmask, [_c(_i32, _SIG_SETMASK), b.bitcast(full, _i8p),
                              b.bitcast(old, _i8p)])
        start = self.load(b, "nworkers")
        head, body, ok, fail, done = (f.append_basic_block(x)
                                      for x in ("head", "body", "ok", "fail", "done"))
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(_i32)
        k.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", k, want), body, done)
        b.position_at_end(body)
        slot = b.inttoptr(b.zext(b.add(k, _c(_i32, 1)), _i64), _i8p)
        r = b.call(self.pthread_create, [tid, ir.Constant(_i8p, None), self.f_worker, slot])
        b.cbranch(b.icmp_signed("==", r, _c(_i32, 0)), ok, fail)
        b.position_at_end(ok)
        b.call(self.pthread_detach, [b.load(tid)])
        k1 = b.add(k, _c(_i32, 1))
        self.store(b, "nworkers", k1)
        k.add_incoming(k1, ok)
        b.branch(head)
        b.position_at_end(fail)
        self.store(b, "failed", _c(_i32, 1))
        b.branch(done)
        b.position_at_end(done)
        b.call(self.sigmask, [_c(_i32, _SIG_SETMASK), b.bitcast(old, _i8p),
                              ir.Constant(_i8p, None)])
        b.ret_void()
        return f

    def run(self):
        f, b = self.fn(RUN, _void, [CHUNK_TYPE.as_pointer(), _i8p, _i64, _i32], internal=False)
        fn, data, n, nthreads = f.args
        blocks = {x: f.append_basic_block(x) for x in ("some", "shared", "take",
                                                       "alone", "busy", "start", "publish",
                                                       "wake", "work", "out")}
        b.cbranch(b.icmp_signed(">", n, _c(_i64, 0)), blocks["some"], blocks["out"])
        b.position_at_end(blocks["some"])
        share = b.and_(b.and_(b.icmp_signed(">", nthreads, _c(_i32, 1)),
                              b.icmp_signed(">", n, _c(_i64, 1))),
                       b.icmp_signed("<=", n, _c(_i64, MAX_CHUNKS)))
        b.cbranch(share, blocks["shared"], blocks["alone"])
        b.position_at_end(blocks["shared"])
        b.call(self.f_process, [])
        res = b.cmpxchg(self.g["busy"], _c(_i32, 0), _c(_i32, 1), "acquire", "monotonic")
        b.cbranch(b.extract_value(res, 1), blocks["take"], blocks["busy"])
        b.position_at_end(blocks["busy"])  # another job runs: do this one here, alone
        b.atomic_rmw("add", self.g["inline"], _c(_i64, 1), "monotonic")
        b.branch(blocks["alone"])
        b.position_at_end(blocks["alone"])
        b.call(self.f_inline, [fn, data, n])
        b.branch(blocks["out"])
        # we hold the pool: start missing workers, publish the job, work, wait
        b.position_at_end(blocks["take"])
        limit = b.select(b.icmp_signed(">", nthreads, _c(_i32, MAX_THREADS)),
                         _c(_i32, MAX_THREADS), nthreads)
        want = b.sub(limit, _c(_i32, 1))
        short = b.icmp_signed("<", self.load(b, "nworkers"), want)
        can = b.icmp_unsigned("==", self.load(b, "failed"), _c(_i32, 0))
        b.cbranch(b.and_(short, can), blocks["start"], blocks["publish"])
        b.position_at_end(blocks["start"])
        b.call(self.f_start, [want])
        b.branch(blocks["publish"])
        b.position_at_end(blocks["publish"])
        # NOTE (1): descriptor and `done` first, then the release store of `state`.
        self.store(b, "fn", b.bitcast(fn, _i8p))
        self.store(b, "data", data)
        self.store(b, "limit", b.sext(limit, _i64))
        self.store(b, "done", _c(_i32, 0))
        self.store(b, "waiting", _c(_i32, 0))
        gen = b.add(b.lshr(self.load(b, "state"), _c(_i64, _GEN_SHIFT)), _c(_i64, 1))
        self.store(b, "state", b.or_(b.shl(gen, _c(_i64, _GEN_SHIFT)), n), "release")
        b.atomic_rmw("add", self.g["seq"], _c(_i32, 1), "seq_cst")
        sleepers = self.load(b, "sleepers", "seq_cst")  # NOTE (5)
        b.cbranch(b.icmp_signed(">", sleepers, _c(_i32, 0)), blocks["wake"], blocks["work"])
        b.position_at_end(blocks["wake"])
        helpers = b.sub(b.select(b.icmp_signed("<", b.sext(limit, _i64), n),
                                 b.sext(limit, _i64), n), _c(_i64, 1))
        self.futex(b, "seq", _FUTEX_WAKE_PRIVATE, b.trunc(helpers, _i32))
        b.branch(blocks["work"])
        b.position_at_end(blocks["work"])
        longest = b.call(self.f_participate, [_c(_i64, 0)])
        b.call(self.f_wait, [n, longest])
        self.store(b, "jobs", b.add(self.load(b, "jobs"), _c(_i64, 1)))
        self.store(b, "busy", _c(_i32, 0), "release")
        b.branch(blocks["out"])
        b.position_at_end(blocks["out"])
        b.ret_void()

    def info(self):
        """void info(i64* out): workers started, jobs shared, jobs run alone because the pool
        was busy, the pid the pool belongs to (for tests and diagnostics)."""
        f, b = self.fn(INFO, _void, [_i64.as_pointer()], internal=False)
        (out,) = f.args
        vals = [b.sext(self.load(b, "nworkers"), _i64), self.load(b, "jobs"),
                self.load(b, "inline"), b.sext(self.load(b, "pid"), _i64)]
        for k, v in enumerate(vals):
            b.store(v, b.gep(out, [_c(_i64, k)]))
        b.ret_void()


def build_module() -> ir.Module:
    m = jit.new_module("lamina_pool")
    _Builder(m).emit()
    return m


def build_object() -> bytes:
    """The pool compiled for the host: without IR optimization (the O0 pipeline; code
    generation runs at O3), as the GEMM: it is control flow and atomics written as they
    should run, and O2 took 0.035 s of its 0.07 s build for no measurable change in speed."""
    opt = jit.optimize(jit.finalize_text(build_module()), loops=False, level=0)
    return jit.emit_object(opt.module)


# --- loading ----------------------------------------------------------------------------------


def source_key() -> str:
    """A hash of this file: the pool's code and constants (part of its cache key)."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class PoolLibrary:
    """The pool loaded into this process: its engine, object code and entry addresses."""

    def __init__(self, object_code: bytes):
        self.object_code = object_code
        self.engine = jit.Engine(object_code=object_code, runtime=False)
        self.addresses = {s: self.engine.address(s) for s in SYMBOLS}
        for s, a in self.addresses.items():
            llvm.add_symbol(s, a)
        # NOTE: never freed, not even at interpreter shutdown (module globals are cleared
        # then): a worker may still be spinning in this code, or wake up in it.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.engine))
        self._info = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.addresses[INFO])
        self._run = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int32)(self.addresses[RUN])

    def info(self) -> dict[str, int]:
        """workers started, jobs shared, jobs run alone (pool busy), pid it belongs to."""
        out = (ctypes.c_int64 * 4)()
        self._info(ctypes.addressof(out))
        return dict(zip(("workers", "jobs", "alone", "pid"), out))

    def run(self, fn: int, data: int, nchunks: int, nthreads: int) -> None:
        """Run chunk function ``fn`` (an address) over ``nchunks`` (releases the GIL)."""
        self._run(fn, data, nchunks, nthreads)


_LOCK = threading.Lock()
_LIB: list[PoolLibrary] = []


def loaded() -> bool:
    return bool(_LIB)


def library(object_code: bytes | None = None) -> PoolLibrary:
    """The process's pool: the one already loaded; else ``object_code`` (an artifact's); else
    from the disk cache, or compiled (once per machine and lamina version) and cached."""
    with _LOCK:
        if not _LIB:
            if object_code is None:
                object_code = _cached_object()
            _LIB.append(PoolLibrary(object_code))
        return _LIB[0]


def _cached_object() -> bytes:
    from lamina import __version__
    from lamina.runtime import cache as cache_mod

    versions = {**jit.versions(), "lamina": __version__}
    parts = cache_mod.key_parts(source_key(), "pool", versions, jit.host().key())
    c = cache_mod.Cache()
    obj = c.get("lamina_pool", parts)
    if obj is None:
        obj = build_object()
        c.put("lamina_pool", parts, obj)
    return obj
