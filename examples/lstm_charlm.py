"""A 2-layer LSTM character model of Python source code (the standard library's own files).

    python examples/lstm_charlm.py [--backend llvm|numpy|triton] [--steps 1500] [--quick]

``nn.Embedding`` -> ``nn.LSTM(num_layers=2, batch_first=True)`` -> ``nn.Linear`` over the
characters, trained on windows of 64 characters with Adam, gradient clipping and a cosine
schedule. Prints the validation loss in bits per character and a sample of generated code:
the generation is one compiled call, a ``lm.scan`` over the characters to generate, each step
running the LSTM one character ahead and drawing the next one in the graph (Gumbel-max).
"""

from __future__ import annotations

import math
import time

import numpy as np
from common import CharData, charlm_report, parser, text_corpus
from tqdm import tqdm

import lamina as lm
from lamina import nn, optim


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int = 64, hidden: int = 256, layers: int = 2):
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def __call__(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def gumbel_sample(logits, temperature: float):
    """One draw per row from softmax(logits / temperature), in the graph (Gumbel-max)."""
    u = lm.clip(lm.random.uniform(logits.shape), 1e-7, 1.0 - 1e-7)
    return (logits / temperature - lm.log(-lm.log(u))).argmax(axis=1).astype("int32")


def main(argv=None):
    ap = parser(__doc__, "lstm_charlm")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--generate", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.generate = 3, 40

    lm.random.seed(args.seed)
    data = CharData(*text_corpus())
    V = len(data.chars)
    model = CharLSTM(V)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr / 20)

    @lm.compile(backend=args.backend)
    def train_step(x, y):
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.minimize(loss, clip_grad_norm=1.0)
        return loss

    @lm.compile(backend=args.backend)
    def eval_loss(x, y):
        logits, _ = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))

    @lm.compile(backend=args.backend, static_argnums=(1,))
    def generate(prompt, n):
        """``n`` characters after ``prompt`` [1, P], as one scan."""
        logits, (h, c) = model(prompt)
        first = gumbel_sample(logits[:, -1], args.temperature)

        def step(carry, _):
            h, c, ch = carry
            out, (h, c) = model(ch.reshape(1, 1), (h, c))
            nxt = gumbel_sample(out[:, 0], args.temperature)
            return (h, c, nxt), nxt[0]

        _, chars = lm.scan(step, (h, c, first), None, length=n)
        return chars

    rng = np.random.default_rng(args.seed)
    val_rng = np.random.default_rng(args.seed + 1)
    val_batches = [data.batch(val_rng, 64, args.context, "val") for _ in range(4 if args.quick
                                                                             else 16)]

    def val_bits():
        model.eval()
        nats = np.mean([float(eval_loss(x, y)) for x, y in val_batches])
        model.train()
        return nats / math.log(2)

    losses, vals = [], []
    start = time.perf_counter()
    bar = tqdm(range(args.steps), desc="lstm_charlm", unit="step")
    for i in bar:
        losses.append(float(train_step(*data.batch(rng, args.batch, args.context))) / math.log(2))
        sched.step()
        bar.set_postfix(bits=f"{np.mean(losses[-50:]):.3f}")
        if (i + 1) % 250 == 0 or i + 1 == args.steps:
            vals.append((i + 1, val_bits()))
    seconds = time.perf_counter() - start
    prompt = "def "
    model.eval()
    codes = generate(np.array([[data.index[c] for c in prompt]], np.int32), args.generate)
    sample = prompt + data.decode(codes)
    return charlm_report("lstm_charlm", args, seconds, losses, vals, data, sample,
                         "generated (one compiled scan)")


if __name__ == "__main__":
    main()
