"""Logistic regression on sklearn's breast-cancer data set (binary classification) with lamina.

    python examples/logistic_regression.py [--backend llvm|numpy] [--epochs 100]

A linear model, sigmoid cross-entropy from logits, SGD with momentum; prints held-out accuracy.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    lm.random.seed(args.seed)
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    model = nn.Linear(x.shape[1], 1)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)

    @lm.compile(backend=args.backend)
    def train_step(xb, yb):
        logits = model(xb).reshape(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, yb)
        opt.minimize(loss)
        return loss

    predict = lm.compile(lambda xb: model(xb).reshape(-1) > 0, backend=args.backend)

    order = np.random.default_rng(args.seed)
    steps = len(x_train) // args.batch
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        perm = order.permutation(len(x_train))
        losses = [float(train_step(x_train[perm[i * args.batch:(i + 1) * args.batch]],
                                   y_train[perm[i * args.batch:(i + 1) * args.batch]]))
                  for i in range(steps)]
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")

    acc = float((predict(x_test) == (y_test > 0.5)).mean())
    print(f"backend={args.backend}: held-out accuracy {acc:.2%} on {len(y_test)} tumours")
    return acc


if __name__ == "__main__":
    main()
