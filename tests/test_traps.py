"""Traps users fall into silently elsewhere, each with a clear behaviour here: train/eval mode,
float64 inputs into float32 models, numpy scalars, byte order, numbers and shapes that do not
fit, misspelt or unusable ``LAMINA_*`` variables, Python values frozen at trace time."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import warnings

import numpy as np
import pytest

import lamina as lm
from lamina import nn
from lamina.ir import config
from lamina.ir.errors import ConfigError, PromotionWarning, ShapeError, SignatureError
from lamina.runtime import cache

HERE = os.path.basename(__file__)


def _line_of(fn, text: str) -> int:
    """The line number of the first line of ``fn``'s source containing ``text``."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


# --- 1. train/eval mode ---------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)

    def __call__(self, x):
        return self.drop(self.fc1(x))


def _dense(model, x):
    return x @ model.fc1.w.numpy() + model.fc1.b.numpy()


def test_eval_after_a_train_mode_trace_switches_dropout_off(backend):
    lm.random.seed(0)
    model = Net()
    f = lm.compile(lambda x: model(x), backend=backend)
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    dense = _dense(model, x)

    train_out = f(x)
    dropped = train_out == 0
    assert 0.3 < dropped.mean() < 0.7, "train mode: about half the elements dropped"
    np.testing.assert_allclose(train_out[~dropped], 2 * dense[~dropped], rtol=1e-5, atol=1e-6)

    model.eval()
    np.testing.assert_allclose(f(x), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(x), dense, rtol=1e-5, atol=1e-6)  # the quick path, too
    assert len(f.compile_log) == 2
    assert "module mode changed (train()/eval()): Dropout.training True -> False" \
        in f.compile_log[1]

    model.train()
    again = f(x)
    assert len(f.compile_log) == 2, "back in train mode: the first variant is reused"
    assert 0.3 < (again == 0).mean() < 0.7
    assert not np.array_equal(again == 0, dropped), "a fresh dropout mask per call"


def test_mode_of_a_submodule_set_directly_counts_too():
    model = Net()
    f = lm.compile(lambda x: model(x), backend="numpy")
    x = np.ones((4, 8), np.float32)
    f(x)
    model.drop.training = False  # PyTorch users do this too
    np.testing.assert_allclose(f(x), _dense(model, x), rtol=1e-6)
    model.drop.training = False  # no change: nothing to do
    assert len(f.variants) == 2


def test_functions_that_read_no_mode_do_not_recompile_after_eval():
    model = Net()
    f = lm.compile(lambda x: model.fc1(x), backend="numpy")
    x = np.ones((2, 8), np.float32)
    f(x)
    model.eval()
    f(x)
    model.train()
    f(x)
    assert len(f.variants) == 1


def test_save_after_eval_ships_the_inference_variant(tmp_path):
    model = Net()
    f = lm.compile(lambda x: model(x), backend="numpy")
    x = np.ones((4, 8), np.float32)
    f(x)
    model.eval()
    f(x)
    f.save(tmp_path / "net.lamina")
    loaded = lm.load(tmp_path / "net.lamina")
    assert len(loaded.variants) == 1
    np.testing.assert_allclose(loaded(x), _dense(model, x), rtol=1e-6)


# --- 2. a float64 input into a float32 model --------------------------------------------------


class MLP(nn.Module):
    def __init__(self, dtype=lm.float32):
        self.fc1 = nn.Linear(4, 8, dtype=dtype)
        self.fc2 = nn.Linear(8, 2, dtype=dtype)

    def __call__(self, x):
        h = lm.relu(self.fc1(x))  # the float64 argument meets fc1.w here
        return self.fc2(h)


def test_float64_input_into_a_float32_model_warns_once_and_follows_numpy():
    model = MLP()
    f = lm.compile(lambda x: model(x), backend="numpy")
    x = np.random.default_rng(0).standard_normal((3, 4))  # float64, as numpy makes it
    line = _line_of(MLP.__call__, "self.fc1(x)")
    with pytest.warns(PromotionWarning) as record:
        y = f(x)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"argument 'x' (float64) meets parameter 'fc1.w' (float32) at "
                              f"{HERE}:{line}: the result is float64")
    assert "pass x.astype(np.float32)" in message
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    # numpy's promotion, kept: float64 all the way
    w1, b1, w2, b2 = (p.numpy() for p in model.parameters())
    want = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    assert y.dtype == np.float64 == want.dtype
    np.testing.assert_allclose(y, want, rtol=1e-12)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(x * 2)  # the same variant: no second warning
        f(x.astype(np.float32))  # float32 in: nothing to say


def test_a_float64_target_widens_values_computed_from_parameters():
    model = MLP()
    opt = lm.optim.SGD(model.parameters(), lr=0.1)

    @lm.compile(backend="numpy")
    def step(x, y):
        loss = nn.functional.mse_loss(model(x), y)
        opt.minimize(loss)
        return loss

    line = _line_of(step.fn, "mse_loss")
    with pytest.warns(PromotionWarning, match=r"^argument 'y' \(float64\) meets float32 "
                                              rf"values computed from parameter 'fc2\.[wb]' "
                                              rf"at {HERE}:{line}: "):
        loss = step(np.ones((3, 4), np.float32), np.zeros((3, 2)))
    assert loss.dtype == np.float64
    assert model.fc2.w.dtype == lm.float32, "parameters keep their dtype"


def test_no_promotion_warning_where_nothing_widens_a_parameter():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model64 = MLP(dtype=lm.float64)
        lm.compile(lambda x: model64(x), backend="numpy")(np.ones((1, 4)))
        both = lm.compile(lambda x, y: x + y, backend="numpy")  # two arguments: the caller's
        assert both(np.ones(2), np.ones(2, np.float32)).dtype == np.float64  # choice


# --- 3. numpy scalars keep their dtype --------------------------------------------------------


@pytest.mark.parametrize("arg, dtype", [
    (np.float64(2.5), np.float64), (np.array(2.5), np.float64), (2.5, np.float32),
    (np.float32(2.5), np.float32), (np.int32(3), np.int32), (3, np.int64),
])
def test_a_number_argument_has_numpys_dtype(arg, dtype):
    f = lm.compile(lambda s: s * 2, backend="numpy")
    y = f(arg)
    assert y.dtype == dtype and y == arg * 2


def test_numpy_scalars_and_python_floats_do_not_share_a_variant():
    f = lm.compile(lambda x, s: x * s, backend="numpy")
    x = np.ones(2, np.float32)
    assert f(x, 2.0).dtype == np.float32  # a Python float is weak
    assert f(x, np.float64(2.0)).dtype == (x * np.float64(2.0)).dtype == np.float64
    assert f(x, 3.0).dtype == np.float32
    assert len(f.variants) == 2


def test_static_arguments_decide_the_variant_by_value():
    f = lm.compile(lambda x, n: x.reshape(n, -1), backend="numpy", static_argnums=(1,))
    x = np.arange(12, dtype=np.float32)
    assert f(x, 3).shape == (3, 4)
    assert f(x, 4).shape == (4, 3)
    assert f(x, 3).shape == (3, 4)


# --- 4. byte order, numbers and shapes that do not fit -------------------------------------


def test_a_big_endian_array_is_converted(backend):
    f = lm.compile(lambda x: x * 2.0 + 1.0, backend=backend)
    little = np.arange(6, dtype=np.float32)
    big = little.astype(">f4")
    np.testing.assert_array_equal(f(big), little * 2 + 1)
    assert f(big).dtype == np.float32
    np.testing.assert_array_equal(f(little), little * 2 + 1)
    assert len(f.variants) == 1, "same values, same type: one variant"
    assert lm.trace(lambda x: x, big).inputs[0].type == lm.TensorType((6,), "f32")


def test_an_int_beyond_int64_is_refused_naming_the_argument():
    f = lm.compile(lambda x, n: x * n, backend="numpy")
    x = np.ones(2, np.int64)
    with pytest.raises(SignatureError, match=r"argument 'n' is 1180591620717411303424, which "
                                             r"does not fit int64"):
        f(x, 2 ** 70)
    assert (f(x, 3) == 3).all()
    with pytest.raises(SignatureError, match=r"argument 'n' is -1180591620717411303424, which "
                                             r"does not fit int64"):
        f(x, -2 ** 70)  # the compiled variant's own check says the same


@pytest.mark.parametrize("shape", [(2 ** 63,), (2 ** 62, 4), (2 ** 61,)])
def test_an_absurd_shape_is_refused_naming_it(shape):
    text = str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ShapeError, match=rf"shape {text} is too large"):
        lm.zeros(shape)
    with pytest.raises(ShapeError, match=rf"shape {text} is too large") as info:
        lm.trace(lambda: lm.ones(shape) + 1.0)
    assert info.value.loc is not None and info.value.loc.file == __file__


def test_a_shape_that_is_not_integers_is_refused():
    with pytest.raises(ShapeError, match=r"shape \(2.5,\) must be an int or a sequence of ints"):
        lm.zeros((2.5,))
    with pytest.raises(ShapeError, match=r"negative dimension in shape \(-1, 2\)"):
        lm.zeros((-1, 2))
    assert lm.zeros(np.array([2, 3])).shape == (2, 3)


# --- 5. LAMINA_* variables are checked --------------------------------------------------------


@pytest.fixture
def reload_config(monkeypatch):
    """Re-read the import-time flags under a changed environment; restored afterwards."""

    def reload(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        importlib.reload(config)

    yield reload
    monkeypatch.undo()
    importlib.reload(config)


@pytest.mark.parametrize("name, value, says", [
    ("LAMINA_DEBUG", "abc", "must be a non-negative integer"),
    ("LAMINA_DEBUG", "-1", "must be a non-negative integer"),
    ("LAMINA_VERIFY", "ture", "must be one of 1, true, yes, on (on) or 0, false, no, off"),
    ("LAMINA_PRINT_CHANGED", "maybe", "must be one of"),
    ("LAMINA_CHECK_ROUNDTRIP", "2", "must be one of"),
])
def test_import_time_flags_name_the_variable(reload_config, name, value, says):
    with pytest.raises(ConfigError, match=re.escape(f"{name}='{value}': {says}")):
        reload_config(**{name: value})


def test_switches_accept_the_usual_spellings(reload_config):
    reload_config(LAMINA_VERIFY="Off", LAMINA_PRINT_CHANGED=" YES ", LAMINA_DEBUG="2")
    assert (config.verify, config.print_changed, config.debug) == (False, True, 2)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_num_threads_is_checked(monkeypatch, value):
    from lamina.backends.llvm import jit

    monkeypatch.setenv("LAMINA_NUM_THREADS", value)
    with pytest.raises(ConfigError, match=f"^LAMINA_NUM_THREADS='{value}': must be a positive "
                                          "integer"):
        config.num_threads()
    threads = getattr(jit.threads, "__wrapped__", jit.threads)  # past its cache
    with pytest.raises(ConfigError, match="LAMINA_NUM_THREADS"):
        threads()
    monkeypatch.setenv("LAMINA_NUM_THREADS", "3")
    assert config.num_threads() == 3


def test_print_after_with_an_unknown_pass_lists_the_passes(reload_config):
    reload_config(LAMINA_PRINT_AFTER="autodiff,nosuchpass")
    f = lm.compile(lambda x: x + 1, backend="numpy")
    with pytest.raises(ConfigError) as info:
        f(np.ones(2, np.float32))
    assert info.value.message.startswith(
        "LAMINA_PRINT_AFTER='autodiff,nosuchpass': no pass named 'nosuchpass'; use 'all' or a "
        "comma list of: traced, decompose, autodiff, simplify")
    assert "fused" in info.value.message


def test_print_after_a_base_name_prints_every_run_of_that_pass(capsys):
    with config.patch(print_after="simplify", print_changed=False):
        lm.compile(lambda x: x * 1.0 + 0.0, backend="numpy")(np.ones(2, np.float32))
    err = capsys.readouterr().err
    assert "after 03 simplify " in err and "after 07 simplify.2 " in err
    with config.patch(print_after="simplify.2", print_changed=False):
        lm.compile(lambda x: x * 1.0 + 0.0, backend="numpy")(np.ones(2, np.float32))
    err = capsys.readouterr().err
    assert "after 03 simplify " not in err and "after 07 simplify.2 " in err


def test_an_unwritable_dump_folder_names_the_variable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with config.patch(dump=str(blocker / "dumps")):
        with pytest.raises(ConfigError, match=r"^LAMINA_DUMP='.*a_file/dumps': cannot create "
                                              r"the dump folder"):
            lm.compile(lambda x: x + 1, backend="numpy")(np.ones(2, np.float32))


def test_cache_variables_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMINA_CACHE", "sometimes")
    with pytest.raises(ConfigError, match="^LAMINA_CACHE='sometimes': must be one of"):
        cache.cache_dir()
    monkeypatch.setenv("LAMINA_CACHE", "0")
    assert cache.cache_dir() is None
    monkeypatch.setenv("LAMINA_CACHE", "1")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ConfigError, match=r"^LAMINA_CACHE_DIR='.*': cannot create the cache "
                                          r"folder .*LAMINA_CACHE=0"):
        cache.cache_dir()
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache"))
    assert cache.cache_dir() == str(tmp_path / "cache")


def test_triton_variables_name_themselves(monkeypatch):
    from lamina.backends.triton import triton_backend

    monkeypatch.setenv("LAMINA_TRITON_MODE", "gpu")
    with pytest.raises(ConfigError, match="^LAMINA_TRITON_MODE='gpu': use 'device' or "
                                          "'interpret'"):
        triton_backend.mode()
    monkeypatch.setenv("LAMINA_TRITON_TARGETS", "sm_90,hopper")
    with pytest.raises(ConfigError, match="^LAMINA_TRITON_TARGETS='sm_90,hopper': unknown GPU "
                                          "target 'hopper'"):
        triton_backend.targets()


# --- 6. Python values are read while tracing ------------------------------------------------


def test_a_global_read_while_tracing_is_frozen_and_an_argument_is_not():
    # what README and lm.compile's docstring promise, as a test of its own
    state = {"scale": 2.0}
    f = lm.compile(lambda x: x * state["scale"], backend="numpy")
    x = np.ones(2, np.float32)
    assert (f(x) == 2).all()
    state["scale"] = 3.0
    assert (f(x) == 2).all()
    g = lm.compile(lambda x, scale: x * scale, backend="numpy")
    assert (g(x, 2.0) == 2).all() and (g(x, 3.0) == 3).all()
    assert len(g.variants) == 1, "a new Python number is a new input value, not a recompile"
