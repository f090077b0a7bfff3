"""Train an MLP on sklearn's handwritten digits (8x8 images, 10 classes) with lamina.

    python examples/mlp_digits.py [--backend llvm|numpy|triton] [--epochs 40]

The whole training step (forward, cross-entropy, backward, Adam update) is one compiled graph;
parameters and Adam's moments stay resident between steps. Prints held-out accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim


class MLP(nn.Module):
    def __init__(self, sizes=(64, 256, 128, 10)):
        self.layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = lm.relu(layer(x))
        return self.layers[-1](x)


def load_data(seed: int):
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6  # statistics of the training set only
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    lm.random.seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args.seed)
    model = MLP()
    opt = optim.Adam(model.parameters(), lr=args.lr)

    @lm.compile(backend=args.backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    predict = lm.compile(lambda x: model(x).argmax(axis=1), backend=args.backend)

    order = np.random.default_rng(args.seed)
    steps = len(x_train) // args.batch  # full batches only: one compiled signature
    start = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for epoch in bar:
        perm = order.permutation(len(x_train))
        losses = []
        for i in range(steps):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            losses.append(float(train_step(x_train[idx], y_train[idx])))
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    seconds = time.perf_counter() - start

    acc = float((predict(x_test) == y_test).mean())
    print(f"backend={args.backend}: {args.epochs} epochs in {seconds:.1f} s, "
          f"held-out accuracy {acc:.2%} on {len(y_test)} digits")
    return acc


if __name__ == "__main__":
    main()
