"""The PassManager (stage names, change flags, remarks, timing, verifier errors, printing,
dumping) and the same machinery end to end through ``lm.compile``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import lamina as lm
from lamina.ir import (
    Graph,
    LaminaError,
    Node,
    VerifyError,
    config,
    parse,
    print_graph,
    verify,
)
from lamina.passes import (
    PassManager,
    decompose,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    simplify,
)

cse = eliminate_common_subexpressions
dce = eliminate_dead_code


from pass_util import assert_same_behaviour, norm

# --- the pass manager -------------------------------------------------------------------------

PM_INPUT = """
    graph @pm(%x: f32[3]) {
      %0 = exp(%x) : f32[3]
      %1 = exp(%x) : f32[3]
      %2 = constant() {value=1.0} : f32[]
      %3 = mul(%1, %2) : f32[3]
      %4 = add(%0, %3) : f32[3]
      return %4
    }
"""


def test_pass_manager_stage_names_changed_flags_remarks_and_timing():
    g = parse(norm(PM_INPUT))
    final, stages = PassManager([simplify, cse, simplify, dce, dce]).run(g)
    assert [s.name for s in stages] == ["traced", "simplify", "cse", "simplify.2", "dce",
                                        "dce.2"]
    assert [s.changed for s in stages] == [True, True, True, False, True, False]
    assert [s.remarks for s in stages] == [
        [], ["mul_one: 1"], ["merged 1 duplicate exp node(s)"], [],
        ["removed 1 dead node(s): constant"], []]
    assert stages[0].graph is g and stages[-1].graph is final
    assert all(isinstance(s.seconds, float) and 0 <= s.seconds < 5 for s in stages)
    assert re.fullmatch(r"# ---- after 02 cse \(changed, \d+\.\d ms\) ----", stages[2].header(2))
    assert stages[3].header(3).startswith("# ---- after 03 simplify.2 (unchanged, ")
    assert stages[2].text(2).split("\n")[1] == "# remark: merged 1 duplicate exp node(s)"
    assert print_graph(final) == norm("""
        graph @pm(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = add(%0, %0) : f32[3]
          return %1
        }
    """)
    assert_same_behaviour(g, final, exact=True)


def test_pass_manager_first_stage_name_and_empty_pipeline():
    g = parse(norm(PM_INPUT))
    final, stages = PassManager([]).run(g, first_stage="parsed")
    assert final is g and [s.name for s in stages] == ["parsed"]


def _broken_pass(g: Graph) -> Graph:
    """Gives the first node a wrong result type."""
    n = g.nodes[0]
    bad = Node(n.op, n.inputs, n.attrs, n.type.with_shape((7,)), n.loc)
    return g.replace(nodes=[bad] + g.nodes[1:], outputs=[bad])


_broken_pass.pass_name = "breaker"


def test_pass_manager_surfaces_verifier_errors_with_the_pass_name():
    g = parse(norm(PM_INPUT))
    with config.patch(verify=True), pytest.raises(VerifyError) as info:
        PassManager([dce, _broken_pass]).run(g)
    assert info.value.message.startswith(
        "after pass breaker: @pm: result type f32[7] differs from the type rule's f32[3]")

    def broken_simplify(graph):
        return _broken_pass(graph)

    broken_simplify.pass_name = "simplify"
    with (config.patch(verify=True),
          pytest.raises(VerifyError, match=r"^after pass simplify\.2: @pm: result type")):
        PassManager([simplify, broken_simplify]).run(g)


def test_pass_manager_without_verify_lets_a_broken_graph_through():
    g = parse(norm(PM_INPUT))
    with config.patch(verify=False, check_roundtrip=False):
        final, _ = PassManager([_broken_pass]).run(g)
    assert final.nodes[0].type.shape == (7,)
    with pytest.raises(VerifyError):
        verify(final)


def test_pass_manager_names_a_pass_that_crashes():
    def crashing(g):
        raise KeyError("oops")

    with pytest.raises(LaminaError) as info:
        PassManager([crashing]).run(parse(norm(PM_INPUT)))
    assert info.value.message == "pass crashing failed on @pm: KeyError: 'oops'"
    assert isinstance(info.value.__cause__, KeyError)


def test_pass_manager_check_roundtrip_catches_text_that_does_not_round_trip():
    def reorder(g):
        # attributes in another order print differently than they parse back
        n = g.nodes[0]
        bad = Node(n.op, n.inputs, {"keepdims": False, "axis": (0,)}, n.type)
        return g.replace(nodes=[bad], outputs=[bad])

    g = parse("graph @f(%x: f32[3]) {\n  %0 = sum(%x) {axis=[0], keepdims=false} : f32[]\n"
              "  return %0\n}\n")
    with (config.patch(verify=False, check_roundtrip=True),
          pytest.raises(VerifyError, match="^after pass reorder: the IR text does not round")):
        PassManager([reorder]).run(g)


def test_print_after_all_prints_every_stage_to_stderr(capsys):
    g = parse(norm(PM_INPUT))
    with config.patch(print_after="all", print_changed=False):
        PassManager([cse, simplify, dce, dce]).run(g)
    out = capsys.readouterr()
    assert out.out == ""
    headers = re.findall(r"^# ---- after (\d\d) (\S+) \((\w+), ", out.err, re.MULTILINE)
    assert headers == [("00", "traced", "changed"), ("01", "cse", "changed"),
                       ("02", "simplify", "changed"), ("03", "dce", "changed"),
                       ("04", "dce.2", "unchanged")]
    assert "# remark: merged 1 duplicate exp node(s)" in out.err
    assert "# remark: removed 1 dead node(s): constant" in out.err
    assert out.err.count("graph @pm(%x: f32[3]) {") == 5
    assert out.err.split("\n# ---- after 04")[1].split("\n", 1)[1] == norm("""
        graph @pm(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = add(%0, %0) : f32[3]
          return %1
        }
    """) + "\n"


def test_print_after_named_passes_only(capsys):
    with config.patch(print_after="dce, simplify", print_changed=False):
        PassManager([simplify, cse, dce]).run(parse(norm(PM_INPUT)))
    err = capsys.readouterr().err
    assert re.findall(r"^# ---- after \d\d (\S+) ", err, re.MULTILINE) == ["simplify", "dce"]


def test_print_changed_skips_unchanged_stages(capsys):
    g = parse(norm(PM_INPUT))
    with config.patch(print_after="all", print_changed=True):
        PassManager([decompose, cse, dce, dce, simplify]).run(g)
    err = capsys.readouterr().err
    assert re.findall(r"^# ---- after (\d\d) (\S+) ", err, re.MULTILINE) == [
        ("00", "traced"), ("02", "cse"), ("05", "simplify")]


def test_no_printing_by_default(capsys):
    with config.patch(print_after="", debug=0):
        PassManager([cse, dce]).run(parse(norm(PM_INPUT)))
    assert capsys.readouterr().err == ""


def test_dump_writes_one_numbered_file_per_stage(tmp_path):
    g = parse(norm(PM_INPUT))
    with config.patch(dump=str(tmp_path)):
        _, stages = PassManager([simplify, cse, simplify, dce]).run(g)
        PassManager([dce]).run(g)  # a second graph of the same name: a fresh folder
    assert sorted(os.listdir(tmp_path)) == ["pm.0", "pm.1"]
    files = sorted(os.listdir(tmp_path / "pm.0"))
    assert files == ["00_traced.lir", "01_simplify.lir", "02_cse.lir", "03_simplify.2.lir",
                     "04_dce.lir"]
    for i, (name, stage) in enumerate(zip(files, stages)):
        text = (tmp_path / "pm.0" / name).read_text()
        assert text.startswith(f"# ---- after {i:02d} {stage.name} (")
        assert text == stage.text(i)
        assert print_graph(parse(text)) == print_graph(stage.graph)
    assert "# remark: mul_one: 1\n" in (tmp_path / "pm.0" / "01_simplify.lir").read_text()
    assert sorted(os.listdir(tmp_path / "pm.1")) == ["00_traced.lir", "01_dce.lir"]
    assert not [f for f in os.listdir(tmp_path / "pm.0") if ".tmp" in f]


# --- end to end -------------------------------------------------------------------------------


def _loss(x, w):
    return (lm.gelu(x @ w) * 2.0).mean()


def test_llvm_adds_the_fused_stage():
    f = lm.compile(lm.grad(_loss, argnums=1), backend="llvm")
    f.lower(lm.TensorType((2, 3)), lm.TensorType((3, 4)))
    assert f.stages()[-4:] == ["dce", "licm", "expand_conv", "fused"]
    assert "kernel @fused_" in f.ir("fused")


def test_compile_stages_and_ir():
    f = lm.compile(lm.grad(_loss, argnums=1), backend="numpy")
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    g = f(x, w)
    assert g.shape == (3, 4) and g.dtype == np.float32
    names = f.stages()
    assert names == ["traced", "decompose", "autodiff", "simplify", "fold_constants", "cse",
                     "trim_scans", "simplify.2", "dce", "licm"]
    for i, name in enumerate(names):
        text = f.ir(name)
        assert text.startswith(f"# ---- after {i:02d} {name} (")
        parse(text)
    assert "gelu(" in f.ir("traced") and "grad(" in f.ir("traced")
    assert "gelu(" not in f.ir("decompose") and "grad(" in f.ir("decompose")
    assert "grad(" not in f.ir("autodiff")
    final = f.ir()
    assert final == f.ir("dce").split("\n", 1 + f.ir("dce").count("# remark"))[-1]
    assert "(grad)" in final and "# test_pass_manager.py:" in final
    with pytest.raises(LaminaError, match="no stage 'nope'"):
        f.ir("nope")
    # the compiled gradient agrees with a central difference of the compiled loss
    eps = 1e-3
    for i, j in [(0, 0), (2, 3)]:
        dw = np.zeros_like(w)
        dw[i, j] = eps
        plus = lm.compile(_loss)(x, w + dw)
        minus = lm.compile(_loss)(x, w - dw)
        assert abs((plus - minus) / (2 * eps) - g[i, j]) < 1e-3


DUMP_SCRIPT = """
import numpy as np
import lamina as lm

f = lm.compile(lambda x: lm.softmax(x).sum(), name="dumped")
print(f(np.ones((2, 3), np.float32)))
"""


def test_lamina_dump_environment_variable(tmp_path):
    env = dict(os.environ, LAMINA_DUMP=str(tmp_path / "dumps"))
    for k in ("LAMINA_PRINT_AFTER", "LAMINA_DEBUG"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", DUMP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout) - 2.0) < 1e-6
    folder = tmp_path / "dumps" / "dumped.0"
    everything = sorted(p.name for p in folder.iterdir())
    files = [f for f in everything if f.endswith(".lir")]
    assert files == ["00_traced.lir", "01_decompose.lir", "02_autodiff.lir", "03_simplify.lir",
                     "04_fold_constants.lir", "05_cse.lir", "06_trim_scans.lir",
                     "07_simplify.2.lir", "08_dce.lir", "09_licm.lir", "10_expand_conv.lir",
                     "11_fused.lir"]
    # the default (llvm) backend adds its plan, the LLVM IR before/after O3 and the assembly
    assert everything[len(files):] == ["12_memory_plan.txt", "13_llvm_pre_opt.ll",
                                       "14_llvm_opt.ll", "15_llvm.s"]
    for i, name in enumerate(files):
        text = (folder / name).read_text()
        assert text.startswith(f"# ---- after {i:02d} {name[3:-4]} (")
        g = parse(text)
        assert g.name == "dumped"
    assert "softmax(" in (folder / "00_traced.lir").read_text()
    assert "softmax(" not in (folder / "01_decompose.lir").read_text()
    assert "unchanged" in (folder / "02_autodiff.lir").read_text().split("\n")[0]
