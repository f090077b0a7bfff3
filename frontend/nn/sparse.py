"""``Embedding``: a lookup table of vectors, and ``nn.functional.embedding``."""

from __future__ import annotations

import numpy as np

from lamina.frontend import ops
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Buffer, Parameter
from lamina.frontend.random import host_rng
from lamina.frontend.trace import user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Var
from lamina.ir.errors import DTypeError, LaminaError


class Embedding(Module):
    """A lookup table: ``weight[indices]`` for integer ``indices`` of any shape, giving
    ``indices.shape + (embedding_dim,)``. As in PyTorch: ``weight`` is
    [num_embeddings, embedding_dim], initialized from N(0, 1); with ``padding_idx`` that row
    starts at zero and gets no gradient (it stays as it is in training).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> emb = nn.Embedding(10, 3, padding_idx=0)
    >>> lm.compile(emb)(np.array([[0, 2], [4, 0]])).shape
    (2, 2, 3)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm=None, dtype=dt.float32):
        if max_norm is not None:
            raise LaminaError("Embedding: max_norm is not supported (it renormalizes the "
                              "weight in place during the forward pass)")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise LaminaError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                  f"{num_embeddings} embeddings")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        w = host_rng().standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w.astype(dt.dtype(dtype).np), "weight")

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None):
        """An Embedding holding ``embeddings`` [num, dim] (copied). With ``freeze`` (the
        default) the weight is a Buffer: the same ``weight`` in ``state_dict()``, but not a
        parameter, so optimizers leave it alone and no gradient is computed for it.

        >>> import numpy as np
        >>> from lamina import nn
        >>> emb = nn.Embedding.from_pretrained(np.eye(3, dtype=np.float32))
        >>> emb.parameters(), list(emb.state_dict())
        ([], ['weight'])
        """
        arr = np.asarray(embeddings)
        if arr.ndim != 2:
            raise LaminaError(f"Embedding.from_pretrained: embeddings must be 2-D "
                              f"[num_embeddings, embedding_dim], got shape {list(arr.shape)}")
        emb = cls(arr.shape[0], arr.shape[1], padding_idx, dtype=dt.dtype(arr.dtype))
        emb.weight = (Buffer if freeze else Parameter)(arr, name="weight")
        return emb

    def __call__(self, indices):
        return embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


def embedding(indices, weight, padding_idx: int | None = None):
    """Rows of ``weight`` picked by integer ``indices`` (``nn.functional.embedding``); with
    ``padding_idx``, positions holding it pass no gradient to the weight."""

    def f(b, idx, w):
        if not isinstance(idx, Var):  # a Python int picks one row
            idx = b.var(b.lift(idx))
        if not idx.dtype.is_int:
            raise DTypeError(f"embedding: indices must be integers, got {idx.type}", user_loc())
        out = b.call("take", w, idx, axis=0)
        if padding_idx is None:
            return out
        # the same values; at padding positions the gradient stops before the weight
        pad = (idx == padding_idx).reshape(idx.shape + (1,))
        return b.call("where", pad, b.call("stop_gradient", out), out)

    return ops.run(f, indices, weight)
