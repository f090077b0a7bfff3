"""Peak memory of one implementation of a workload, measured the same way for every library.

Each implementation runs in a fresh Python process (``run.py --memory IMPL --workload NAME``),
alone, so that nothing another library allocated or cached is counted:

1. the process imports the implementation's library (lamina, torch or jax) and allocates the
   workload's inputs; its resident set size then is the **baseline** (``VmRSS`` in
   ``/proc/self/status``);
2. it builds the implementation and calls it twice (compilation, warm-up), drops the results,
   and reads ``VmRSS`` again: **held** = that minus the baseline (what the implementation keeps
   between calls: compiled code, caches, preallocated buffers, modules its compiler imported);
3. it resets the kernel's high-water mark (writing ``5`` to ``/proc/self/clear_refs``), makes
   one more call, keeps its result, and reads ``VmHWM``: **peak** = that minus the baseline (the
   most memory the process held during the call beyond its inputs: held + the call's
   temporaries + its results). ``call`` = peak - held is the call's own working memory.

``first`` is the high-water mark of step 2 (the build and the first calls, compilation
included) minus the baseline. Where ``clear_refs`` cannot be written, ``first`` is the process's
lifetime high-water mark minus the baseline and ``peak`` is not measured.

glibc's malloc keeps freed memory for reuse and moves its mmap threshold up after large frees,
so a freed block may stay resident and hide a later allocation from the RSS. The child runs with
``MALLOC_MMAP_THRESHOLD_=131072`` (fixed: every block of 128 KiB or more is its own mapping,
returned to the system when freed) and ``MALLOC_TRIM_THRESHOLD_=131072``, for every library
alike. Memory of other processes (torch.compile's compile workers) is not counted.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys

MIB = 1 << 20
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) * 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(build) -> dict:
    """In the measuring process: the memory of ``build()``'s Runner over the current baseline
    (call this after the imports and the inputs). Sizes in MiB."""
    gc.collect()
    base = _status("VmRSS")
    reset_peak()  # so that "first" does not see what came before the baseline
    runner = build()
    out = runner.call()
    del out
    out = runner.call()
    del out
    gc.collect()
    held = _status("VmRSS")
    first = _status("VmHWM")
    res = {"base_mib": base / MIB, "held_mib": (held - base) / MIB,
           "first_mib": (first - base) / MIB}
    if reset_peak():
        out = runner.call()
        peak = _status("VmHWM")
        del out
        res.update(peak_mib=(peak - base) / MIB, call_mib=(peak - held) / MIB)
    return res


def run_child(script: str, impl: str, workload: str, args: list[str], log) -> dict:
    """Run ``script --memory impl --workload workload *args`` in a fresh process and return
    its measurement (or {"error": ...})."""
    env = dict(os.environ, **CHILD_ENV)
    cmd = [sys.executable, script, "--memory", impl, "--workload", workload, *args]
    try:
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                           timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 1800 s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    log(f"  memory of {impl} failed (exit {p.returncode}): {tail}")
    return {"error": tail}
