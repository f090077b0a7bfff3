"""Convolution and pooling over spatial axes: ``lm.conv``, ``lm.conv_transpose``,
``lm.max_pool``, ``lm.avg_pool`` (any of 1-D and 2-D, chosen by the weight's or the kernel's
rank) and the PyTorch-named wrappers of ``lamina.nn.functional`` (``conv2d``, ...).

Layouts are PyTorch's: inputs ``[N, C, *spatial]`` (or unbatched ``[C, *spatial]``), conv
weights ``[out, in/groups, *kernel]``, transposed-conv weights ``[in, out/groups, *kernel]``.
"""

from __future__ import annotations

import numpy as np

from lamina.frontend.ops import run
from lamina.frontend.trace import user_loc
from lamina.ir.errors import LaminaError, ShapeError
from lamina.ir.ops.conv import MAX_SPATIAL


def _per_axis(what: str, v, r: int, fn: str) -> tuple:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * r
    v = tuple(v)
    if len(v) == 1:
        v = v * r
    if len(v) != r:
        raise LaminaError(f"{fn}: {what} needs 1 or {r} entries, got {list(v)}", user_loc())
    return v


def _padding(padding, w_shape, stride, dilation, fn: str):
    """``padding`` as (lo, hi) pairs: ints (symmetric), pairs, ``'valid'`` or ``'same'``."""
    r = len(w_shape) - 2
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * r
        if padding != "same":
            raise LaminaError(f"{fn}: padding must be an int, a tuple, 'valid' or 'same', "
                              f"got {padding!r}", user_loc())
        if any(s != 1 for s in _per_axis("stride", stride, r, fn)):
            raise LaminaError(f"{fn}: padding='same' needs stride 1 (as in PyTorch)",
                              user_loc())
        dil = _per_axis("dilation", dilation, r, fn)
        pairs = []
        for k, d in zip(w_shape[2:], dil):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))  # the odd one at the end
        return tuple(pairs)
    return padding


def _batched(x, r: int, fn: str):
    """(x as [N, C, *spatial], whether a batch axis was added)."""
    if x.ndim == r + 2:
        return x, False
    if x.ndim == r + 1:
        return x.reshape((1,) + x.shape), True
    want = "[N, C, L] or [C, L]" if r == 1 else "[N, C, H, W] or [C, H, W]"
    raise ShapeError(f"{fn}: the input must be {want} for a {r}-D operation, got {x.type}",
                     user_loc())


def _spatial_rank(w_ndim: int, fn: str) -> int:
    r = w_ndim - 2
    if not 1 <= r <= MAX_SPATIAL:
        raise ShapeError(f"{fn}: the weight must be [out, in/groups, k] (1-D) or "
                         f"[out, in/groups, kh, kw] (2-D), got {w_ndim} axes", user_loc())
    return r


def _conv(b, x, w, stride, padding, dilation, groups):
    r = _spatial_rank(w.ndim, "conv")
    xb, added = _batched(x, r, "conv")
    pad = _padding(padding, w.shape, stride, dilation, "conv")
    y = b.call("conv", xb, w, stride=stride, padding=pad, dilation=dilation, groups=groups)
    return y.reshape(y.shape[1:]) if added else y


def conv(x, weight, stride=1, padding=0, dilation=1, groups: int = 1):
    """Convolution (cross-correlation, as PyTorch) of ``x`` [N, C, *spatial] with ``weight``
    [O, C/groups, *kernel]; 1-D or 2-D after the weight's rank. ``padding``: an int or one per
    axis (symmetric), (lo, hi) pairs, ``'valid'`` or ``'same'`` (stride 1).

    >>> import numpy as np, lamina as lm
    >>> x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    >>> lm.conv(x, np.ones((1, 1, 3), np.float32), padding=1)
    array([[[1., 3., 6., 9., 7.]]], dtype=float32)
    """
    return run(lambda b, x, w: _conv(b, x, w, stride, padding, dilation, groups), x, weight)


def _conv_transpose(b, x, w, stride, padding, output_padding, dilation, groups):
    r = _spatial_rank(w.ndim, "conv_transpose")
    xb, added = _batched(x, r, "conv_transpose")
    y = b.call("conv_transpose", xb, w, stride=stride, padding=padding,
               output_padding=output_padding, dilation=dilation, groups=groups)
    return y.reshape(y.shape[1:]) if added else y


def conv_transpose(x, weight, stride=1, padding=0, output_padding=0, dilation=1,
                   groups: int = 1):
    """Transposed convolution (PyTorch's ``conv_transpose1d/2d``): ``x`` [N, C, *spatial],
    ``weight`` [C, O/groups, *kernel]; the gradient of ``lm.conv`` with respect to its input.

    >>> import numpy as np, lamina as lm
    >>> x = np.ones((1, 1, 2), np.float32)
    >>> lm.conv_transpose(x, np.ones((1, 1, 3), np.float32), stride=2)
    array([[[1., 1., 2., 1., 1.]]], dtype=float32)
    """
    return run(lambda b, x, w: _conv_transpose(b, x, w, stride, padding, output_padding,
                                               dilation, groups), x, weight)


def _pool_rank(x, kernel_size, fn: str) -> int:
    if isinstance(kernel_size, (int, np.integer)):
        return x.ndim - 2
    return len(tuple(kernel_size))


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
    """Maximum over windows of ``x`` [N, C, *spatial] (1-D or 2-D after ``kernel_size``;
    an int kernel: the axes after N and C). ``stride`` defaults to the kernel; padding reads
    as -inf. The gradient goes to the first maximum of each window, as in PyTorch.

    >>> import numpy as np, lamina as lm
    >>> lm.max_pool(np.array([[[1, 3, 2, 2, 5]]], np.float32), 2)
    array([[[3., 2.]]], dtype=float32)
    """
    def f(b, x):
        r = _pool_rank(x, kernel_size, "max_pool")
        xb, added = _batched(x, r, "max_pool")
        y = b.call("max_pool", xb, kernel=kernel_size, stride=stride, padding=padding,
                   dilation=dilation, ceil_mode=ceil_mode)
        return y.reshape(y.shape[1:]) if added else y

    return run(f, x)


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override=None):
    """Mean over windows of ``x`` [N, C, *spatial] with PyTorch's divisor rules
    (``count_include_pad``: padded zeros count; ``divisor_override``: a fixed divisor).

    >>> import numpy as np, lamina as lm
    >>> lm.avg_pool(np.array([[[1, 3, 2, 2, 5]]], np.float32), 2)
    array([[[2., 2.]]], dtype=float32)
    """
    def f(b, x):
        r = _pool_rank(x, kernel_size, "avg_pool")
        xb, added = _batched(x, r, "avg_pool")
        y = b.call("avg_pool", xb, kernel=kernel_size, stride=stride, padding=padding,
                   ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                   divisor_override=divisor_override)
        return y.reshape(y.shape[1:]) if added else y

    return run(f, x)


# --- PyTorch's names (lamina.nn.functional) ---------------------------------------------------


def _check_rank(w, r: int, fn: str):
    if w.ndim != r + 2:
        raise ShapeError(f"{fn}: the weight must have {r + 2} axes, got {w.type}", user_loc())


def _with_bias(b, y, bias, fn: str, r: int):
    axis = 0 if y.ndim == r + 1 else 1  # unbatched: the channels come first
    if bias.shape != (y.shape[axis],):
        raise ShapeError(f"{fn}: bias must be [{y.shape[axis]}] (one per output channel), "
                         f"got {bias.type}", user_loc())
    return y + bias.reshape((y.shape[axis],) + (1,) * (y.ndim - axis - 1))


def _conv_nd(r: int, name: str):
    def fn(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        def f(b, x, w, *bias):
            _check_rank(w, r, name)
            y = _conv(b, x, w, stride, padding, dilation, groups)
            return _with_bias(b, y, bias[0], name, r) if bias else y

        return run(f, input, weight, *([] if bias is None else [bias]))

    fn.__name__ = name
    fn.__doc__ = (f"PyTorch's ``torch.nn.functional.{name}``: ``input`` [N, C, ...] (or "
                  f"unbatched), ``weight`` [out, in/groups, ...], optional ``bias`` [out].")
    return fn


def _conv_transpose_nd(r: int, name: str):
    def fn(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
           dilation=1):
        def f(b, x, w, *bias):
            _check_rank(w, r, name)
            y = _conv_transpose(b, x, w, stride, padding, output_padding, dilation, groups)
            return _with_bias(b, y, bias[0], name, r) if bias else y

        return run(f, input, weight, *([] if bias is None else [bias]))

    fn.__name__ = name
    fn.__doc__ = (f"PyTorch's ``torch.nn.functional.{name}`` (note its argument order: "
                  "groups before dilation); ``weight`` [in, out/groups, ...].")
    return fn


def _kernel_nd(kernel_size, r: int, fn: str):
    return _per_axis("kernel_size", kernel_size, r, fn)


def _max_pool_nd(r: int, name: str):
    def fn(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
           return_indices=False):
        if return_indices:
            raise LaminaError(f"{name}: return_indices=True is not supported", user_loc())
        k = _kernel_nd(kernel_size, r, name)
        s = None if stride is None or (isinstance(stride, (list, tuple)) and not stride) \
            else stride  # PyTorch's default is stride=[]: the kernel
        return max_pool(input, k, s, padding, dilation, ceil_mode)

    fn.__name__ = name
    fn.__doc__ = f"PyTorch's ``torch.nn.functional.{name}`` (without return_indices)."
    return fn


def _avg_pool_nd(r: int, name: str):
    def fn(input, kernel_size, stride=None, padding=0, ceil_mode=False,
           count_include_pad=True, divisor_override=None):
        k = _kernel_nd(kernel_size, r, name)
        s = None if stride is None or (isinstance(stride, (list, tuple)) and not stride) \
            else stride  # PyTorch's default is stride=[]: the kernel
        return avg_pool(input, k, s, padding, ceil_mode, count_include_pad, divisor_override)

    fn.__name__ = name
    fn.__doc__ = f"PyTorch's ``torch.nn.functional.{name}``."
    return fn


def _adaptive_avg_pool_nd(r: int, name: str):
    def fn(input, output_size):
        """Average over ``output_size`` windows per axis chosen as PyTorch does (start
        floor(i*n/o), end ceil((i+1)*n/o)); output size 1 is the mean over the axis."""

        def f(b, x):
            if x.ndim not in (r + 1, r + 2):
                raise ShapeError(f"{name}: the input must have {r + 1} or {r + 2} axes, got "
                                 f"{x.type}", user_loc())
            sizes = _per_axis("output_size", output_size, r, name)
            lead = x.ndim - r
            for i, o in enumerate(sizes):
                axis = lead + i
                n = x.shape[axis]
                o = n if o is None else int(o)
                if o < 1 or n < 1:
                    raise ShapeError(f"{name}: output size {o} for an axis of size {n} "
                                     f"({x.type})", user_loc())
                if o == 1:
                    x = x.mean(axis=axis, keepdims=True)
                elif o != n:
                    x = _adaptive_axis(b, x, axis, n, o)
            return x

        return run(f, input)

    fn.__name__ = name
    fn.__doc__ = (f"PyTorch's ``torch.nn.functional.{name}``: output size 1 is the global "
                  "average over the axis.")
    return fn


def _adaptive_axis(b, x, axis: int, n: int, o: int):
    """Average pooling of one axis into ``o`` windows as a product with a constant [n, o]
    matrix of 1/len weights (windows overlap when n is not a multiple of o)."""
    mat = np.zeros((n, o))
    for i in range(o):
        start, end = (i * n) // o, -((-(i + 1) * n) // o)
        mat[start:end, i] = 1.0 / (end - start)
    moved = list(range(x.ndim))
    moved.append(moved.pop(axis))
    xt = x.transpose(moved)
    y = xt @ b.var(b.constant(mat.astype(x.dtype.np), x.dtype, mat.shape))
    back = list(range(x.ndim - 1))
    back.insert(axis, x.ndim - 1)
    return y.transpose(back)


conv1d, conv2d = _conv_nd(1, "conv1d"), _conv_nd(2, "conv2d")
conv_transpose1d = _conv_transpose_nd(1, "conv_transpose1d")
conv_transpose2d = _conv_transpose_nd(2, "conv_transpose2d")
max_pool1d, max_pool2d = _max_pool_nd(1, "max_pool1d"), _max_pool_nd(2, "max_pool2d")
avg_pool1d, avg_pool2d = _avg_pool_nd(1, "avg_pool1d"), _avg_pool_nd(2, "avg_pool2d")
adaptive_avg_pool1d = _adaptive_avg_pool_nd(1, "adaptive_avg_pool1d")
adaptive_avg_pool2d = _adaptive_avg_pool_nd(2, "adaptive_avg_pool2d")
