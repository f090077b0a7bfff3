"""A denoising diffusion model (DDPM) that learns to draw 8x8 digits, with lamina.

    python examples/diffusion.py [--backend llvm|numpy|triton] [--steps 6000] [--quick]

Training (Ho et al., 2020): a digit x0, a step t and Gaussian noise drawn *in the compiled
graph* give x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; an MLP with a sinusoidal embedding
of t predicts the noise. An exponential moving average of the weights (``optim.EMA``) is what
samples. Sampling runs all T denoising steps as one ``lm.fori_loop``: one compiled call, its
fresh noise drawn in the loop.

The check against the data: a classifier trained on real digits (sklearn's logistic
regression) reads the samples: its mean confidence and how many of the 10 classes appear,
next to the same numbers for real held-out digits and for noise.
"""

from __future__ import annotations

import math
import time

import numpy as np
from common import classifier_check, digits, parser, sample_grid, save_figure, smooth
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim
from lamina.data import DataLoader

T = 200
BETAS = np.linspace(1e-4, 0.04, T, dtype=np.float64)
ALPHAS = 1.0 - BETAS
ABAR = np.cumprod(ALPHAS)


def timestep_embedding(t, dim: int = 64):
    """Sinusoidal features of the (float) step ``t`` [N] -> [N, dim], as in the Transformer."""
    half = dim // 2
    freqs = np.exp(-math.log(1000.0) * np.arange(half) / half).astype(np.float32)
    angles = t.reshape(-1, 1) * freqs
    return lm.concatenate([lm.sin(angles), lm.cos(angles)], axis=1)


class Denoiser(nn.Module):
    def __init__(self, size: int = 64, hidden: int = 512, emb: int = 64):
        self.emb = emb
        self.time = nn.Sequential(nn.Linear(emb, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(size, hidden)
        self.blocks = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(3)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(3)])
        self.out = nn.Linear(hidden, size)

    def __call__(self, x, t):
        h = self.inp(x) + self.time(timestep_embedding(t, self.emb))
        for block, norm in zip(self.blocks, self.norms):
            h = h + block(lm.gelu(norm(h)))  # residual MLP blocks
        return self.out(lm.gelu(h))


def main(argv=None):
    ap = parser(__doc__, "diffusion")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.samples = 3, 16

    lm.random.seed(args.seed)
    x_train, y_train, x_test, _ = digits(args.seed, scale="signed")
    model = Denoiser()
    opt = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = optim.lr_scheduler.SequentialLR(opt, [
        optim.lr_scheduler.LinearLR(opt, 0.01, total_iters=min(200, args.steps)),
        optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.steps - 200))],
        milestones=[min(200, args.steps)])
    ema = optim.EMA(model, decay=0.995)
    sqrt_ab = np.sqrt(ABAR).astype(np.float32)
    sqrt_1mab = np.sqrt(1.0 - ABAR).astype(np.float32)

    @lm.compile(backend=args.backend)
    def train_step(x0, t):
        noise = lm.random.normal(x0.shape)                 # drawn in the graph
        a = lm.take(sqrt_ab, t).reshape(-1, 1)
        s = lm.take(sqrt_1mab, t).reshape(-1, 1)
        loss = nn.functional.mse_loss(model(a * x0 + s * noise, t.astype("float32")), noise)
        opt.minimize(loss, clip_grad_norm=1.0)
        ema.update()
        return loss

    coef = (BETAS / np.sqrt(1.0 - ABAR)).astype(np.float32)
    inv_sqrt_a = (1.0 / np.sqrt(ALPHAS)).astype(np.float32)
    sigma = np.sqrt(BETAS).astype(np.float32)  # DDPM's sigma_t^2 = beta_t

    @lm.compile(backend=args.backend)
    def sample(n_like):
        """All T denoising steps in one loop (noise drawn per step inside it)."""
        def step(i, x):
            t = T - 1 - i
            tt = lm.full((x.shape[0],), 1.0) * t.astype("float32")
            eps = model(x, tt)
            mean = (x - lm.take(coef, t) * eps) * lm.take(inv_sqrt_a, t)
            z = lm.random.normal(x.shape)
            return mean + lm.where(t > 0, lm.take(sigma, t), 0.0) * z
        return lm.fori_loop(0, T, step, lm.random.normal(n_like.shape))

    rng = np.random.default_rng(args.seed)
    loader = DataLoader(x_train, batch_size=args.batch, shuffle=True, drop_last=True,
                        seed=args.seed)
    losses = []
    start = time.perf_counter()
    bar = tqdm(total=args.steps, desc="diffusion", unit="step")
    while len(losses) < args.steps:
        for xb in loader:
            losses.append(float(train_step(xb, rng.integers(0, T, len(xb)).astype(np.int32))))
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if len(losses) == args.steps:
                break
    bar.close()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    with ema.average_parameters():
        samples = np.asarray(sample(np.zeros((args.samples, 64), np.float32)))
    sample_s = time.perf_counter() - start

    # the check: a classifier of real digits reads the samples
    (conf, classes), (conf_real, classes_real), (conf_noise, _) = classifier_check(
        x_train, y_train, x_test, samples)
    print(f"backend={args.backend}: {args.steps} training steps in {train_s:.1f} s; "
          f"{args.samples} samples ({T} denoising steps, one call) in {sample_s:.2f} s")
    print(f"classifier on samples: confidence {conf:.3f}, {classes}/10 classes "
          f"(real held-out digits: {conf_real:.3f}, {classes_real}/10; noise: {conf_noise:.3f})")

    def draw(plt):
        fig = plt.figure(figsize=(11, 3.6))
        ax = fig.add_subplot(1, 3, 1)
        ax.plot(losses, alpha=0.25, color="C0")
        ax.plot(smooth(losses, 50), color="C0")
        ax.set(title="denoising loss", xlabel="step", yscale="log")
        sample_grid(fig, samples, "samples (EMA weights, one sampler call)")
        fig.suptitle(f"diffusion: samples (a classifier of real digits: confidence {conf:.2f}, "
                     f"{classes}/10 classes; real digits {conf_real:.2f})", y=1.04)
        return fig

    save_figure(args.figure, draw)
    return conf


if __name__ == "__main__":
    main()
