"""Batches for a training loop (``lamina.data``): shuffle, batch, drop_last, seeded.

>>> import numpy as np
>>> from lamina.data import DataLoader
>>> x, y = np.arange(10.0), np.arange(10) % 2
>>> loader = DataLoader((x, y), batch_size=4, shuffle=True, seed=0)
>>> len(loader), [xb.shape for xb, yb in loader]
(3, [(4,), (4,), (2,)])

Each epoch's order is drawn from ``(seed, epoch)`` alone, so two loaders with one seed agree
epoch by epoch, and ``state_dict()`` (the epoch and the batches already given) lets a resumed
run continue mid-epoch with the same batches (``lm.save_checkpoint(..., loader=loader)``).
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import LaminaError


class DataLoader:
    """Iterate over ``dataset`` (an array, or a tuple/list of arrays with equal first axes)
    in batches of ``batch_size`` rows: tuples of arrays (one array for an array dataset).
    ``shuffle`` draws a new order every epoch; ``drop_last`` leaves out a short last batch.
    Each ``for`` over the loader is one epoch."""

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0):
        single = not isinstance(dataset, (tuple, list))
        arrays = [np.asarray(a) for a in ([dataset] if single else dataset)]
        if not arrays or any(a.ndim == 0 for a in arrays):
            raise LaminaError("DataLoader: the dataset must be an array or a tuple of arrays "
                              "with a first (sample) axis")
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise LaminaError(f"DataLoader: the arrays have different lengths "
                              f"{[a.shape[0] for a in arrays]}")
        if int(batch_size) < 1:
            raise LaminaError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        self.arrays, self.single = arrays, single
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed = int(seed)
        self.epoch = 0      # epochs finished
        self.position = 0   # batches of the current epoch already given

    def __len__(self) -> int:
        n = self.arrays[0].shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``."""
        n = self.arrays[0].shape[0]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def __iter__(self):
        idx = self.order(self.epoch)
        for k in range(self.position, len(self)):
            take = idx[k * self.batch_size:(k + 1) * self.batch_size]
            self.position = k + 1
            batch = tuple(a[take] for a in self.arrays)
            yield batch[0] if self.single else batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state["seed"])


__all__ = ["DataLoader"]
