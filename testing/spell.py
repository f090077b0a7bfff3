"""How the random-program checker writes a call of an op in the public API, as Python source.

``SPELLINGS[op]`` lists renderers ``(args, attrs, types, rng) -> str | None``: ``args`` are the
operands' source expressions, ``attrs`` the attributes the op's domain drew, ``types`` the
operands' types; ``None`` means "not this way for these operands" (``x.T`` only reverses the
axes). Every op the registry can call is also reachable generically through
``apply("<op>", ...)`` (``lamina.frontend.ops.apply``), so a new op is fuzzed before anyone
writes a spelling for it.
"""

from __future__ import annotations

import ast
import math

import numpy as np

from lamina.ir import dtypes as dt


def fmt(v) -> str:
    """A Python literal for an attribute value (dtypes as ``lm.float32``)."""
    if isinstance(v, dt.DType):
        return "lm.bool_" if v.is_bool else f"lm.{v.name}"
    if isinstance(v, tuple):
        return "(" + ", ".join(fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(float(v))
    return repr(v)


def kwargs(attrs: dict) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in attrs.items())


def generic(op: str, args, attrs) -> str:
    parts = [repr(op)] + list(args) + ([kwargs(attrs)] if attrs else [])
    return f"apply({', '.join(parts)})"


# --- renderers --------------------------------------------------------------------------------


def _fn(name, n=1):
    return lambda a, k, t, r: f"{name}({', '.join(a[:n])})"


def _infix(sym):
    return lambda a, k, t, r: f"({a[0]} {sym} {a[1]})"


def _method(name):
    return lambda a, k, t, r: f"{a[0]}.{name}({kwargs(k)})"


def _lm_kw(name):
    return lambda a, k, t, r: f"{name}({', '.join(list(a) + ([kwargs(k)] if k else []))})"


def _reshape(a, k, t, r):
    shape = list(k["shape"])
    if shape and r.random() < 0.4 and math.prod(shape) > 0:
        shape[int(r.integers(len(shape)))] = -1  # numpy's inferred dimension
    return f"{a[0]}.reshape({fmt(tuple(shape))})"


def _flatten(a, k, t, r):
    return f"{a[0]}.flatten()" if len(k["shape"]) == 1 else None


def _squeeze(a, k, t, r):
    shape = t[0].shape
    return f"lm.squeeze({a[0]})" if tuple(d for d in shape if d != 1) == k["shape"] else None


def _expand_dims(a, k, t, r):
    shape, new = t[0].shape, k["shape"]
    if len(new) == len(shape) + 1:
        for i in range(len(new)):
            if new[i] == 1 and new[:i] + new[i + 1:] == shape:
                return f"lm.expand_dims({a[0]}, {i - len(new) if r.random() < 0.3 else i})"
    return None


def _dot_t(a, k, t, r):
    return f"{a[0]}.T" if k["perm"] == tuple(reversed(range(len(k["perm"])))) else None


def _swapaxes(a, k, t, r):
    perm = k["perm"]
    moved = [i for i, p in enumerate(perm) if p != i]
    if len(moved) == 2:
        return f"{a[0]}.swapaxes({moved[0]}, {moved[1]})"
    return None


def _index(a, k, t, r):
    parts = []
    for n, s, e, st in zip(t[0].shape, k["start"], k["stop"], k["step"]):
        if e == s + 1 and r.random() < 0.3:
            parts.append(str(s - n if r.random() < 0.3 else s))  # an int index drops the axis
        elif (s, e, st) == (0, n, 1):
            parts.append(":")
        else:
            parts.append(f"{s if s else ''}:{e if e != n else ''}" + (f":{st}" if st != 1 else ""))
    while parts and parts[-1] == ":" and r.random() < 0.7:
        parts.pop()
    if r.random() < 0.2:
        parts.insert(int(r.integers(len(parts) + 1)), "None")  # a new axis of size 1
    return f"{a[0]}[{', '.join(parts)}]" if parts else f"{a[0]}[...]"


def _stack(a, k, t, r):
    if len({x.shape for x in t}) != 1 or len(a) < 2:
        return None
    return f"lm.stack([{', '.join(a)}], axis={k['axis']})"


def _take_index(a, k, t, r):
    if k["axis"] == 0:
        return f"{a[0]}[{a[1]}]"
    if k["axis"] == 1:
        return f"{a[0]}[:, {a[1]}]"
    return None


def _full(a, k, t, r):
    v, d, shape = k["value"], k["dtype"], k["shape"]
    if isinstance(v, list):
        return None
    if v == 0 and r.random() < 0.5:
        return f"lm.zeros({fmt(shape)}, {fmt(d)})"
    if v == 1 and r.random() < 0.5:
        return f"lm.ones({fmt(shape)}, {fmt(d)})"
    return f"lm.full({fmt(shape)}, {fmt(v)}, {fmt(d)})"


def _arange(a, k, t, r):
    if len(k["shape"]) != 1:
        return None
    return f"lm.arange({k['shape'][0]}, dtype={fmt(k['dtype'])})"


def _random(name, key=True):
    """A draw with the program's key, or (``key=False``) with lamina's global key: state that
    each call advances."""
    def render(a, k, t, r):
        how = f"key={a[0]}, " if key else ""
        return f"lm.random.{name}({fmt(k['shape'])}, {how}dtype={fmt(k['dtype'])})"

    return render


def _same_shapes(render):
    """Only for operands of one shape (the losses require it)."""
    return lambda a, k, t, r: render(a, k, t, r) if len({x.shape for x in t}) == 1 else None


def _cross_entropy(a, k, t, r):
    x = t[0]
    if x.ndim < 1 or k["axis"] % x.ndim != x.ndim - 1 or x.shape[-1] == 0:
        return None
    labels = r.integers(0, x.shape[-1], x.shape[:-1]).tolist()
    how = r.choice(["mean", "sum", "none"])
    return f"lm.nn.functional.cross_entropy({a[0]}, np.array({labels!r}, dtype='int64')" \
           f".reshape({x.shape[:-1]}), reduction={how!r})"


def _take_flat(a, k, t, r):
    return f"lm.take({a[0]}, {a[1]})" if t[0].ndim == 1 else None


def _reduce_fn(name):
    return lambda a, k, t, r: f"lm.{name}({a[0]}, {kwargs(k)})"


SPELLINGS: dict[str, list] = {
    "neg": [lambda a, k, t, r: f"(-{a[0]})", _fn("lm.negative")],
    "abs": [_fn("abs"), _fn("lm.abs")],
    "sign": [_fn("lm.sign")],
    "add": [_infix("+"), _fn("lm.add", 2), lambda a, k, t, r: f"({a[1]} + {a[0]})"],
    "sub": [_infix("-"), _fn("lm.subtract", 2), lambda a, k, t, r: f"(-({a[1]} - {a[0]}))",
            _same_shapes(lambda a, k, t, r: f"lm.nn.functional.mse_loss({a[0]}, {a[1]}, "
                                            f"reduction={r.choice(['mean', 'sum', 'none'])!r})")],
    "mul": [_infix("*"), _fn("lm.multiply", 2), lambda a, k, t, r: f"({a[1]} * {a[0]})",
            lambda a, k, t, r: f"lm.nn.functional.dropout({a[0]}, p=0.25)"],
    "div": [_infix("/"), _fn("lm.divide", 2)],
    "pow": [_infix("**"), _fn("lm.power", 2)],
    "maximum": [_fn("lm.maximum", 2), lambda a, k, t, r: f"lm.clip({a[0]}, min={a[1]})"],
    "minimum": [_fn("lm.minimum", 2), lambda a, k, t, r: f"{a[0]}.clip(max={a[1]})"],
    # reflected spellings too: a literal on the left goes through the tensor's __r*__ method
    "eq": [_infix("=="), lambda a, k, t, r: f"({a[1]} == {a[0]})"],
    "ne": [_infix("!="), lambda a, k, t, r: f"({a[1]} != {a[0]})"],
    "lt": [_infix("<"), lambda a, k, t, r: f"({a[1]} > {a[0]})"],
    "le": [_infix("<="), lambda a, k, t, r: f"({a[1]} >= {a[0]})"],
    "gt": [_infix(">"), lambda a, k, t, r: f"({a[1]} < {a[0]})"],
    "ge": [_infix(">="), lambda a, k, t, r: f"({a[1]} <= {a[0]})"],
    "logical_and": [_infix("&")], "logical_or": [_infix("|")],
    "logical_not": [lambda a, k, t, r: f"(~{a[0]})"],
    "where": [_fn("lm.where", 3)],
    "cast": [lambda a, k, t, r: f"{a[0]}.astype({fmt(k['dtype'])})",
             lambda a, k, t, r: f"lm.astype({a[0]}, {fmt(k['dtype'])})"],
    "stop_gradient": [_fn("lm.stop_gradient")],
    "sum": [_method("sum"), _reduce_fn("sum")],
    "max": [_method("max"), _reduce_fn("max"), _reduce_fn("logsumexp")],
    "min": [_method("min"), _reduce_fn("min")],
    "argmax": [_method("argmax"), _reduce_fn("argmax")],
    "mean": [_method("mean"), _reduce_fn("mean"), _reduce_fn("var"), _reduce_fn("std")],
    "reshape": [_reshape, _flatten, _squeeze, _expand_dims,
                lambda a, k, t, r: f"lm.reshape({a[0]}, {fmt(k['shape'])})"],
    "transpose": [_dot_t, _swapaxes, lambda a, k, t, r: f"{a[0]}.transpose({fmt(k['perm'])})",
                  lambda a, k, t, r: f"lm.transpose({a[0]}, {fmt(k['perm'])})"],
    "broadcast": [lambda a, k, t, r: f"lm.broadcast_to({a[0]}, {fmt(k['shape'])})"],
    "slice": [_index],
    "concatenate": [lambda a, k, t, r: f"lm.concatenate([{', '.join(a)}], axis={k['axis']})",
                    _stack],
    "take": [_lm_kw("lm.take"), _take_index, _take_flat],
    "matmul": [_infix("@"), _fn("lm.matmul", 2)],
    "constant": [_full],
    "iota": [_arange],
    "random_uniform": [_random("uniform"), _random("uniform", key=False)],
    "random_normal": [_random("normal"), _random("normal", key=False)],
    "gelu": [lambda a, k, t, r: f"lm.gelu({a[0]}, approximate={k['approximate']!r})"],
    "softmax": [_lm_kw("lm.softmax")],
    "log_softmax": [_lm_kw("lm.log_softmax"), _cross_entropy],
    "one_hot": [lambda a, k, t, r: f"lm.one_hot({a[0]}, {k['num_classes']}, "
                                   f"dtype={fmt(k['dtype'])})"],
}
for _name in ("exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "softplus", "relu", "erf"):
    SPELLINGS[_name] = [_fn(f"lm.{_name}")]


# --- nn.functional's layers (issue 9): another op's operands, a result of their own type --------


def _embedding(a, k, t, r):
    """``weight[indices]`` as nn.functional.embedding (a take along axis 0 of a matrix)."""
    if k["axis"] != 0 or t[0].ndim != 2:
        return None
    pad = f", padding_idx={int(r.integers(t[0].shape[0]))}" \
        if t[0].shape[0] and r.random() < 0.5 else ""
    return f"lm.nn.functional.embedding({a[1]}, {a[0]}{pad})"


def _normalization(a, k, t, r):
    """A normalization of the operand (rsqrt's operands: floats; the result keeps the shape)."""
    x = t[0]
    if x.ndim < 1 or not math.prod(x.shape):
        return None
    how = ["layer_norm", "rms_norm"]
    if x.ndim >= 2:
        how.append("group_norm")
        if math.prod(x.shape) // x.shape[1] > 1:
            how.append("batch_norm")
    fn = how[int(r.integers(len(how)))]
    if fn == "layer_norm":
        return f"lm.nn.functional.layer_norm({a[0]}, {fmt(x.shape[-1:])}, eps=1e-5)"
    if fn == "rms_norm":
        return f"lm.nn.functional.rms_norm({a[0]}, {fmt(x.shape[-1:])}, eps=1e-5)"
    if fn == "group_norm":
        return f"lm.nn.functional.group_norm({a[0]}, 1)"
    return f"lm.nn.functional.batch_norm({a[0]}, None, None, training=True)"


SPELLINGS["take"].append(_embedding)
SPELLINGS["rsqrt"].append(_normalization)


# --- trigonometry, rounding, floor division, remainder, cumsum, padding -----------------------

for _name in ("sin", "cos", "floor", "ceil"):
    SPELLINGS[_name] = [_fn(f"lm.{_name}")]
SPELLINGS["round"] = [_fn("lm.round"), lambda a, k, t, r: f"{a[0]}.round()",
                      lambda a, k, t, r: f"round({a[0]})"]
SPELLINGS["floor_divide"] = [_infix("//"), _fn("lm.floor_divide", 2),
                             lambda a, k, t, r: f"divmod({a[0]}, {a[1]})[0]"]
SPELLINGS["remainder"] = [_infix("%"), _fn("lm.remainder", 2), _fn("lm.mod", 2),
                          lambda a, k, t, r: f"divmod({a[0]}, {a[1]})[1]"]


def _cumsum(a, k, t, r):
    if k["reverse"]:
        return f"lm.cumsum({a[0]}, axis={k['axis']}, reverse=True)"
    if t[0].ndim == 1 and r.random() < 0.3:
        return f"lm.cumsum({a[0]})"  # numpy's axis=None: the flattened tensor
    return f"{a[0]}.cumsum({k['axis']})" if r.random() < 0.4 else \
        f"lm.cumsum({a[0]}, axis={k['axis']})"


SPELLINGS["cumsum"] = [_cumsum]


def _pad_pairs(k):
    if any(k["interior"]):
        return None
    return tuple(zip(k["lo"], k["hi"]))


def _lm_pad(a, k, t, r):
    """lm.pad (numpy's convention) in any of its modes; only the constant mode with 0 is the
    drawn op itself, the others copy elements (take) instead."""
    pairs = _pad_pairs(k)
    if pairs is None:
        return None
    modes = ["constant", "constant"]
    if all(n > 0 for n, p in zip(t[0].shape, pairs) if any(p)):
        modes += ["edge", "replicate", "reflect", "symmetric", "wrap"]
    mode = str(r.choice(modes))
    width = fmt(pairs)
    if len(set(pairs)) == 1 and r.random() < 0.4:  # the same pair for every axis
        lo, hi = pairs[0]
        width = str(lo) if lo == hi else fmt(pairs[0])
    if mode == "constant" and r.random() < 0.5:
        return f"lm.pad({a[0]}, {width}, constant_values={fmt(float(r.choice([-1.5, 2.0])))})"
    return f"lm.pad({a[0]}, {width}, mode={mode!r})"


def _torch_pad(a, k, t, r):
    """nn.functional.pad: (left, right) widths from the last axis backwards, in the modes whose
    limits (PyTorch's) the widths meet."""
    pairs = _pad_pairs(k)
    if pairs is None or not pairs:
        return None
    used = int(r.integers(1, len(pairs) + 1))
    if any(pairs[:len(pairs) - used]):
        used = len(pairs)
    flat = tuple(v for p in reversed(pairs[len(pairs) - used:]) for v in p)
    shape = t[0].shape[len(pairs) - used:]
    tail = pairs[len(pairs) - used:]
    modes = ["constant"]
    if all(n > 0 for n, p in zip(shape, tail) if any(p)):
        modes.append("replicate")
        if all(max(p) <= n for n, p in zip(shape, tail)):
            modes.append("circular")
        if all(max(p) < n for n, p in zip(shape, tail) if any(p)):
            modes.append("reflect")
    mode = str(r.choice(modes))
    value = f", value={fmt(float(r.choice([0.0, 0.5, -2.0])))}" if mode == "constant" else ""
    return f"lm.nn.functional.pad({a[0]}, {fmt(flat)}, mode={mode!r}{value})"


SPELLINGS["pad"] = [_lm_pad, _torch_pad]


# --- convolution and pooling (frontend/spatial.py) ---------------------------------------------


def _torch_padding(k, t, r):
    """PyTorch's spelling of (lo, hi) pairs: ints when symmetric, 'valid' / 'same' when they
    are those (None otherwise)."""
    pairs = k["padding"]
    if all(lo == hi for lo, hi in pairs):
        if not any(lo for lo, _ in pairs) and r.random() < 0.3:
            return "'valid'"
        ints = tuple(lo for lo, _ in pairs)
        return fmt(ints[0]) if len(set(ints)) == 1 and r.random() < 0.5 else fmt(ints)
    w = t[1].shape[2:]
    same = tuple((d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2)
                 for kk, d in zip(w, k["dilation"]))
    if pairs == same and all(s == 1 for s in k["stride"]):
        return "'same'"
    return None


def _conv_torch(a, k, t, r):
    nd = t[0].ndim - 2
    pad = _torch_padding(k, t, r)
    if pad is None:
        return None
    return (f"lm.nn.functional.conv{nd}d({a[0]}, {a[1]}, stride={fmt(k['stride'])}, "
            f"padding={pad}, dilation={fmt(k['dilation'])}, groups={k['groups']})")


def _conv_transpose_torch(a, k, t, r):
    nd = t[0].ndim - 2
    return (f"lm.nn.functional.conv_transpose{nd}d({a[0]}, {a[1]}, stride={fmt(k['stride'])}, "
            f"padding={fmt(k['padding'])}, output_padding={fmt(k['output_padding'])}, "
            f"groups={k['groups']}, dilation={fmt(k['dilation'])})")


def _pool_lm(name):
    def render(a, k, t, r):
        rest = dict(k)
        kernel = rest.pop("kernel")
        if rest["stride"] == kernel and r.random() < 0.5:
            del rest["stride"]  # the default: the kernel
        return f"lm.{name}({a[0]}, {fmt(kernel)}, {kwargs(rest)})"

    return render


def _pool_torch(name):
    def render(a, k, t, r):
        nd = t[0].ndim - 2
        rest = dict(k)
        kernel = rest.pop("kernel")
        if rest.get("divisor_override", 0) is None:
            del rest["divisor_override"]
        if nd == 1 and "divisor_override" in rest:
            return None  # PyTorch's avg_pool1d has none
        size = kernel[0] if len(set(kernel)) == 1 and r.random() < 0.5 else kernel
        return f"lm.nn.functional.{name}{nd}d({a[0]}, {fmt(size)}, {kwargs(rest)})"

    return render


def _global_avg(a, k, t, r):
    x = t[0]
    axis = k["axis"]
    if x.ndim not in (3, 4) or not k["keepdims"] or x.dtype.kind != "f" or axis is None:
        return None
    axes = {a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis)}
    if axes != set(range(2, x.ndim)) or 0 in x.shape[2:]:
        return None
    return f"lm.nn.functional.adaptive_avg_pool{x.ndim - 2}d({a[0]}, 1)"


SPELLINGS.update({
    "conv": [_lm_kw("lm.conv"), _conv_torch],
    "conv_transpose": [_lm_kw("lm.conv_transpose"), _conv_transpose_torch],
    "max_pool": [_pool_lm("max_pool"), _pool_torch("max_pool")],
    "avg_pool": [_pool_lm("avg_pool"), _pool_torch("avg_pool")],
})
SPELLINGS["mean"] = SPELLINGS["mean"] + [_global_avg]


def _sdpa_softmax(a, k, t, r):
    """softmax over the last axis as attention with zero scores, the operand as the float mask
    and the identity as the values (query [..., L, 1], key [..., S, 1], value eye(S))."""
    x = t[0]
    if x.ndim < 2 or k["axis"] % x.ndim != x.ndim - 1 or not math.prod(x.shape) \
            or x.dtype.kind != "f" or x.dtype.bits not in (32, 64):  # (f16 matmul: no llvm GEMM)
        return None
    lead, s, d = x.shape[:-1], x.shape[-1], fmt(x.dtype)
    return (f"lm.nn.functional.scaled_dot_product_attention(lm.zeros({fmt(lead + (1,))}, {d}), "
            f"lm.zeros({fmt(lead[:-1] + (s, 1))}, {d}), lm.astype(np.eye({s}, dtype='float32'), "
            f"{d}), attn_mask={a[0]})")


SPELLINGS["softmax"] = SPELLINGS["softmax"] + [_sdpa_softmax]


def _sdpa(a, k, t, r):
    """attention as PyTorch's scaled_dot_product_attention (the bias as a float attn_mask);
    the scale spelled out or left to its default 1/sqrt(E)."""
    q = t[0]
    if any(x.dtype != q.dtype for x in t) or q.dtype.bits not in (32, 64):
        return None
    e = q.shape[-1]
    default = 1.0 / math.sqrt(e) if e else 1.0
    extra = f", attn_mask={a[3]}" if len(a) > 3 else ""
    if k["causal"]:
        extra += ", is_causal=True"
    if k["scale"] != default or r.random() < 0.3:
        extra += f", scale={fmt(float(k['scale']))}"
    return f"lm.nn.functional.scaled_dot_product_attention({a[0]}, {a[1]}, {a[2]}{extra})"


SPELLINGS["attention"] = [_sdpa]


# --- masks and upsampling (issue 9) ------------------------------------------------------------


def _is_literal(src: str) -> bool:
    """Whether an operand's source is a Python number (not an array-like)."""
    try:
        return isinstance(ast.literal_eval(src), (bool, int, float))
    except (ValueError, SyntaxError):
        return False


def _masked_fill(a, k, t, r):
    """``where(c, v, x)`` as ``masked_fill(x, c, v)`` where ``v`` has one element (or as
    ``masked_fill(v, ~c, x)`` where ``x`` has), the other broadcast to the result's shape."""
    c, v, x = t
    try:
        shape = tuple(np.broadcast_shapes(c.shape, v.shape, x.shape))
    except ValueError:
        return None
    if v.dtype != x.dtype or not c.dtype.is_bool:
        return None
    forms = []
    for (fill, ft), (base, bt), cond in (((a[1], v), (a[2], x), a[0]),
                                         ((a[2], x), (a[1], v), f"(~{a[0]})")):
        if math.prod(ft.shape) != 1 or _is_literal(base):
            continue
        value = fill if ft.ndim == 0 else f"{fill}.reshape(())"
        tensor = base if bt.shape == shape else f"lm.broadcast_to({base}, {fmt(shape)})"
        forms.append(f"lm.masked_fill({tensor}, {cond}, {value})")
    return forms[int(r.integers(len(forms)))] if forms else None


def _interpolate(a, k, t, r):
    """A gather of n positions along an axis has the type of ``interpolate`` to n positions
    along that axis (its own values: the oracle evaluates the program as written): directly on
    the last axes of [N, C, L] / [N, C, H, W], else through a reshape to [P, 1, L, Q]."""
    x, idx = t
    axis, n_out = k["axis"], math.prod(idx.shape)
    if not n_out or 0 in x.shape or x.ndim == 0:
        return None
    out_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    direct = x.ndim in (3, 4) and axis >= 2
    src, shape, ax = a[0], x.shape, axis
    if not direct:
        shape = (math.prod(x.shape[:axis]), 1, x.shape[axis], math.prod(x.shape[axis + 1:]))
        src, ax = f"{a[0]}.reshape({fmt(shape)})", 2
    size = list(shape[2:])
    size[ax - 2] = n_out
    modes = ["nearest", "nearest-exact"]
    if x.dtype.kind == "f":
        modes.append("linear" if len(shape) == 3 else "bilinear")
    mode = modes[int(r.integers(len(modes)))]
    extra = f", align_corners={bool(r.random() < 0.5)}" if mode in ("linear", "bilinear") else ""
    if n_out % shape[ax] == 0 and r.random() < 0.5:  # an integer scale factor
        factors = [1] * (len(shape) - 2)
        factors[ax - 2] = n_out // shape[ax]
        how = f"scale_factor={fmt(tuple(factors))}"
    else:
        how = f"size={fmt(tuple(size))}"
    call = f"lm.nn.functional.interpolate({src}, {how}, mode={mode!r}{extra})"
    return call if tuple(out_shape) == tuple(shape[:ax]) + (n_out,) + tuple(shape[ax + 1:]) \
        else f"{call}.reshape({fmt(tuple(out_shape))})"


SPELLINGS["where"] = SPELLINGS["where"] + [_masked_fill]
SPELLINGS["take"] = SPELLINGS["take"] + [_interpolate]

# ops whose domain is written for their public spelling (matmul takes 1-D vectors there)
PUBLIC_ONLY = {"matmul"}


def render(op: str, args: list[str], attrs: dict, types, rng: np.random.Generator) -> str:
    """One public-API expression calling ``op`` (or the generic ``apply``)."""
    options = [s(args, attrs, types, rng) for s in SPELLINGS.get(op, [])]
    options = [o for o in options if o is not None]
    if op not in PUBLIC_ONLY and (not options or rng.random() < 0.1):
        options.append(generic(op, args, attrs))
    return options[int(rng.integers(len(options)))]
