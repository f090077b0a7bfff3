"""A residual CNN (convolutions, batch norm, pooling) on sklearn's 8x8 digits, with lamina.

    python examples/cnn_digits.py [--backend llvm|numpy|triton] [--epochs 30] [--quick]

Written as a PyTorch user would: ``nn.Conv2d``, ``nn.BatchNorm2d``, a residual block,
``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``, AdamW with no weight decay on norms and biases, a
one-cycle learning-rate schedule, ``lamina.data.DataLoader``. Training pads and shifts the
images by up to one pixel (on the host). Prints the held-out accuracy; the figure shows the
loss curve, the accuracy per epoch and test digits with their predictions.
"""

from __future__ import annotations

import time

import numpy as np
from common import digits, parser, save_figure, smooth
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim
from lamina.data import DataLoader


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def __call__(self, x):
        h = lm.relu(self.bn1(self.conv1(x)))
        return lm.relu(x + self.bn2(self.conv2(h)))


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10):
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ResidualBlock(width)
        self.pool = nn.MaxPool2d(2)                       # 8x8 -> 4x4
        self.widen = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(2 * width), nn.ReLU())
        self.block2 = ResidualBlock(2 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, classes))

    def __call__(self, x):
        x = self.pool(self.block1(self.stem(x)))
        return self.head(self.block2(self.widen(x)))


def shifted(batch: np.ndarray, rng) -> np.ndarray:
    """Each image moved by -1, 0 or +1 pixel in each direction (zero fill)."""
    n = len(batch)
    padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=batch.min())
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    return np.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(n)])


def main(argv=None):
    ap = parser(__doc__, "cnn_digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 1

    lm.random.seed(args.seed)
    x_train, y_train, x_test, y_test = digits(args.seed)
    x_train, x_test = x_train[:, None], x_test[:, None]  # N, C=1, 8, 8
    model = DigitsCNN()
    # weight decay on the conv and linear weights, none on norms and biases (1-D)
    decay = [p for p in model.parameters() if len(p.shape) >= 2]
    no_decay = [p for p in model.parameters() if len(p.shape) < 2]
    opt = optim.AdamW([{"params": decay, "weight_decay": 5e-4},
                       {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    loader = DataLoader((x_train, y_train), batch_size=args.batch, shuffle=True,
                        drop_last=True, seed=args.seed)  # full batches: one compiled shape
    steps = args.epochs * len(loader) if not args.quick else 3
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)

    @lm.compile(backend=args.backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    @lm.compile(backend=args.backend)
    def predict(x):
        return model(x).argmax(axis=1)

    def accuracy():
        model.eval()
        acc = float((predict(x_test) == y_test).mean())
        model.train()
        return acc

    rng = np.random.default_rng(args.seed)
    losses, accs = [], []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="cnn_digits", unit="step")
    for _ in range(args.epochs):
        for xb, yb in loader:
            losses.append(float(train_step(shifted(xb, rng), yb)))
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if len(losses) == steps:
                break
        accs.append(accuracy())
        if len(losses) == steps:
            break
    bar.close()
    seconds = time.perf_counter() - start
    acc = accs[-1]
    print(f"backend={args.backend}: {len(losses)} steps ({args.epochs} epochs) in "
          f"{seconds:.1f} s, held-out accuracy {acc:.2%} on {len(y_test)} digits")

    def draw(plt):
        fig = plt.figure(figsize=(11, 3.4))
        ax = fig.add_subplot(1, 3, 1)
        ax.plot(losses, alpha=0.3, color="C0")
        ax.plot(smooth(losses, 20), color="C0")
        ax.set(title="training loss", xlabel="step", yscale="log")
        ax = fig.add_subplot(1, 3, 2)
        ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], "o-", color="C1")
        ax.set(title="held-out accuracy (%)", xlabel="epoch")
        model.eval()
        pred = predict(x_test[:24])
        for k in range(24):
            a = fig.add_subplot(4, 18, 18 * (k // 6) + 13 + k % 6)
            a.imshow(x_test[k, 0], cmap="gray_r")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(str(pred[k]), fontsize=8,
                        color="green" if pred[k] == y_test[k] else "red")
        fig.suptitle(f"cnn_digits: {acc:.2%} held-out accuracy", y=1.04)
        return fig

    save_figure(args.figure, draw)
    return acc


if __name__ == "__main__":
    main()
