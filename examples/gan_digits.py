"""A GAN that learns to draw 8x8 digits: two models, two optimizers, alternating steps.

    python examples/gan_digits.py [--backend llvm|numpy|triton] [--steps 6000] [--quick]

The discriminator step and the generator step are two compiled functions, each updating its
own model with its own Adam (betas 0.5, 0.999, as in DCGAN); the latent noise is drawn in the
graph. Losses are the non-saturating ones (``binary_cross_entropy_with_logits``); the
generator that samples is an exponential moving average of its weights (``optim.EMA``).

The check: a classifier trained on real digits (sklearn's logistic regression) reads the
samples: its mean confidence and how many of the 10 classes appear (mode coverage), next to
the same numbers for real held-out digits and for noise.
"""

from __future__ import annotations

import time

import numpy as np
from common import classifier_check, digits, parser, sample_grid, save_figure, smooth
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim
from lamina.data import DataLoader

LATENT = 32


def generator():
    return nn.Sequential(nn.Linear(LATENT, 256), nn.LeakyReLU(0.2),
                         nn.Linear(256, 256), nn.LeakyReLU(0.2),
                         nn.Linear(256, 64), nn.Tanh())


def discriminator():
    return nn.Sequential(nn.Linear(64, 256), nn.LeakyReLU(0.2), nn.Dropout(0.2),
                         nn.Linear(256, 256), nn.LeakyReLU(0.2), nn.Dropout(0.2),
                         nn.Linear(256, 1))


def main(argv=None):
    ap = parser(__doc__, "gan_digits")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.samples = 3, 16

    lm.random.seed(args.seed)
    x_train, y_train, x_test, _ = digits(args.seed, scale="signed")
    G, D = generator(), discriminator()
    opt_g = optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    ema = optim.EMA(G, decay=0.999)
    bce = nn.functional.binary_cross_entropy_with_logits

    @lm.compile(backend=args.backend)
    def d_step(real):
        fake = G(lm.random.normal((real.shape[0], LATENT)))
        d_real, d_fake = D(real), D(fake)
        loss = bce(d_real, lm.full(d_real.shape, 0.9)) + bce(d_fake, lm.zeros(d_fake.shape))
        opt_d.minimize(loss)  # D's parameters only: G is read, not trained, here
        return loss

    @lm.compile(backend=args.backend)
    def g_step(like):
        d_fake = D(G(lm.random.normal((like.shape[0], LATENT))))
        loss = bce(d_fake, lm.ones(d_fake.shape))  # non-saturating: make D say "real"
        opt_g.minimize(loss)
        ema.update()
        return loss

    @lm.compile(backend=args.backend)
    def sample(like):
        return G(lm.random.normal((like.shape[0], LATENT)))

    loader = DataLoader(x_train, batch_size=args.batch, shuffle=True, drop_last=True,
                        seed=args.seed)
    d_losses, g_losses = [], []
    start = time.perf_counter()
    bar = tqdm(total=args.steps, desc="gan", unit="step")
    while len(g_losses) < args.steps:
        for xb in loader:
            d_losses.append(float(d_step(xb)))
            g_losses.append(float(g_step(xb)))
            bar.update()
            bar.set_postfix(d=f"{np.mean(d_losses[-50:]):.3f}", g=f"{np.mean(g_losses[-50:]):.3f}")
            if len(g_losses) == args.steps:
                break
    bar.close()
    seconds = time.perf_counter() - start
    G.eval()
    with ema.average_parameters():
        samples = np.asarray(sample(np.zeros((args.samples, 1), np.float32)))
    (conf, classes), (conf_real, classes_real), (conf_noise, _) = classifier_check(
        x_train, y_train, x_test, samples)
    print(f"backend={args.backend}: {args.steps} D+G steps in {seconds:.1f} s")
    print(f"classifier on samples: confidence {conf:.3f}, {classes}/10 classes "
          f"(real held-out digits: {conf_real:.3f}, {classes_real}/10; noise: {conf_noise:.3f})")

    def draw(plt):
        fig = plt.figure(figsize=(11, 3.6))
        ax = fig.add_subplot(1, 3, 1)
        ax.plot(smooth(d_losses, 100), label="discriminator")
        ax.plot(smooth(g_losses, 100), label="generator")
        ax.set(title="losses (smoothed)", xlabel="step")
        ax.legend(fontsize=8)
        sample_grid(fig, samples, "samples of the EMA generator")
        fig.suptitle(f"gan_digits: samples (a classifier of real digits: confidence {conf:.2f}, "
                     f"{classes}/10 classes; real digits {conf_real:.2f})", y=1.04)
        return fig

    save_figure(args.figure, draw)
    return conf


if __name__ == "__main__":
    main()
