"""A convolutional autoencoder (conv down, conv-transpose up) on sklearn's 8x8 digits.

    python examples/autoencoder_digits.py [--backend llvm|numpy|triton] [--epochs 60] [--quick]

Each digit is squeezed through a 16-number code and rebuilt. Prints the held-out
reconstruction error (mean squared, pixels in [0, 1]) against the baseline of predicting the
mean training image for every digit; the figure shows the loss curves and test digits above
their reconstructions.
"""

from __future__ import annotations

import time

import numpy as np
from common import digits, parser, save_figure, smooth
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim
from lamina.data import DataLoader


class AutoEncoder(nn.Module):
    def __init__(self, code: int = 16):
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),     # 8x8 -> 4x4
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),     # 4x4 -> 2x2
            nn.Flatten(), nn.Linear(64 * 2 * 2, code))
        self.expand = nn.Linear(code, 64 * 2 * 2)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),  # 2x2 -> 4x4
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # 4x4 -> 8x8
            nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid())

    def __call__(self, x):
        code = self.encoder(x)
        h = lm.relu(self.expand(code)).reshape(-1, 64, 2, 2)
        return self.decoder(h)


def main(argv=None):
    ap = parser(__doc__, "autoencoder_digits")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)

    lm.random.seed(args.seed)
    x_train, _, x_test, _ = digits(args.seed, scale="unit")
    x_train, x_test = x_train[:, None], x_test[:, None]
    model = AutoEncoder()
    opt = optim.Adam(model.parameters(), lr=args.lr)
    loader = DataLoader(x_train, batch_size=args.batch, shuffle=True, drop_last=True,
                        seed=args.seed)
    steps = 3 if args.quick else args.epochs * len(loader)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    @lm.compile(backend=args.backend)
    def train_step(x):
        loss = nn.functional.mse_loss(model(x), x)
        opt.minimize(loss)
        return loss

    @lm.compile(backend=args.backend)
    def reconstruct(x):
        return model(x)

    def test_error():
        return float(((reconstruct(x_test) - x_test) ** 2).mean())

    baseline = float(((x_train.mean(0, keepdims=True) - x_test) ** 2).mean())
    losses, tests = [], []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="autoencoder", unit="step")
    while len(losses) < steps:
        for xb in loader:
            losses.append(float(train_step(xb)))
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if len(losses) == steps:
                break
        tests.append((len(losses), test_error()))
    bar.close()
    seconds = time.perf_counter() - start
    err = tests[-1][1]
    print(f"backend={args.backend}: {steps} steps in {seconds:.1f} s, held-out reconstruction "
          f"error {err:.4f} (MSE) vs {baseline:.4f} for the mean image: "
          f"{baseline / err:.1f}x lower")

    def draw(plt):
        fig = plt.figure(figsize=(11, 3.6))
        ax = fig.add_subplot(1, 3, 1)
        ax.plot(smooth(losses, 20), label="training (smoothed)")
        ax.plot(*zip(*tests), "o-", label="held-out")
        ax.axhline(baseline, color="gray", ls="--", label="mean image")
        ax.set(title="reconstruction MSE", xlabel="step", yscale="log")
        ax.legend(fontsize=8)
        rec = reconstruct(x_test[:12])
        for k in range(12):
            for row, img in enumerate((x_test[k, 0], rec[k, 0])):
                a = fig.add_subplot(4, 9, 9 * (2 * (k // 6) + row) + 4 + k % 6)
                a.imshow(img, cmap="gray_r", vmin=0, vmax=1)
                a.set_xticks([])
                a.set_yticks([])
        fig.suptitle(f"autoencoder_digits: test digits (rows 1, 3) and their reconstructions "
                     f"(rows 2, 4); error {err:.4f} vs {baseline:.4f} for the mean image",
                     y=1.04)
        return fig

    save_figure(args.figure, draw)
    return err


if __name__ == "__main__":
    main()
