"""What every example shares: its command-line flags, the data it loads, its figure.

Flags: ``--backend`` (llvm, numpy or triton), ``--quick`` (a few steps: what CI runs),
``--seed``, ``--figure PATH`` (where the PNG goes; ``examples/figures/<name>.png`` by
default, ``--figure ''`` for none). Figures need matplotlib (``pip install -e ".[examples]"``);
without it an example says so and trains anyway.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--backend", default="llvm", help="llvm (default), numpy or triton")
    ap.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default=os.path.join(HERE, "figures", f"{name}.png"),
                    help="the PNG to write ('' for none)")
    return ap


def digits(seed: int, scale: str = "standard"):
    """sklearn's 8x8 digits (ships with scikit-learn): train/test split (80/20, stratified).
    ``scale``: "standard" (per-pixel statistics of the training set), "unit" ([0, 1]) or
    "signed" (flat 64-pixel vectors in [-1, 1]: what the generative models draw)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed,
                                              stratify=y)
    if scale == "unit":
        return x_tr / 16.0, y_tr, x_te / 16.0, y_te
    if scale == "signed":
        flat = lambda a: (a.reshape(len(a), 64) / 8.0 - 1.0).astype(np.float32)  # noqa: E731
        return flat(x_tr), y_tr, flat(x_te), y_te
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def save_figure(path: str, draw) -> str | None:
    """``draw(plt)`` makes a figure; it is written to ``path``. None when there is no path or
    no matplotlib (said on stdout)."""
    if not path:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("figure skipped: matplotlib is not installed (pip install -e '.[examples]')")
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig = draw(plt)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    print(f"figure: {path}")
    return path


def smooth(values, k: int = 10) -> np.ndarray:
    """The running mean of the last ``k`` values (for loss curves)."""
    v = np.asarray(values, np.float64)
    return np.array([v[max(0, i - k + 1):i + 1].mean() for i in range(len(v))])


# Python's own standard library, read from this interpreter's installation: a text corpus that
# is on every machine that runs the examples (no download).
CORPUS_FILES = ["argparse.py", "ast.py", "bisect.py", "calendar.py", "collections/__init__.py",
                "configparser.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
                "fractions.py", "functools.py", "heapq.py", "inspect.py", "json/decoder.py",
                "json/encoder.py", "logging/__init__.py", "random.py", "shutil.py",
                "statistics.py", "string.py", "tempfile.py", "textwrap.py", "threading.py",
                "typing.py"]


def text_corpus(max_chars: int = 1_500_000):
    """(text, chars): the concatenated sources of CORPUS_FILES (those this Python has), in
    printable ASCII (anything else becomes '?'), and its sorted alphabet."""
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in CORPUS_FILES:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    text = "\n".join(parts)[:max_chars]
    allowed = {chr(c) for c in range(32, 127)} | {"\n"}
    text = "".join(ch if ch in allowed else "?" for ch in text)
    return text, sorted(set(text))


class CharData:
    """A text as integer codes, split 90/10 into training and validation, with random
    windows of ``context + 1`` characters for next-character prediction."""

    def __init__(self, text: str, chars: list[str]):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        codes = np.array([self.index[c] for c in text], np.int32)
        cut = int(0.9 * len(codes))
        self.train, self.val = codes[:cut], codes[cut:]

    def batch(self, rng, size: int, context: int, split: str = "train"):
        """(inputs, targets): [size, context] windows and the same shifted by one."""
        data = self.train if split == "train" else self.val
        starts = rng.integers(0, len(data) - context - 1, size)
        x = np.stack([data[s:s + context] for s in starts])
        y = np.stack([data[s + 1:s + context + 1] for s in starts])
        return x, y

    def decode(self, codes) -> str:
        return "".join(self.chars[int(c)] for c in codes)


def charlm_report(name: str, args, seconds, losses, vals, data, sample, title) -> float:
    """Print a character model's result and draw its figure (bits per character over the
    steps, the generated text); returns the last validation bits per character."""
    bits = vals[-1][1]
    print(f"backend={args.backend}: {len(losses)} steps in {seconds:.1f} s; validation "
          f"{bits:.3f} bits per character ({len(data.train):,} training characters, "
          f"vocabulary {len(data.chars)})")
    print(f"--- sample (temperature {args.temperature:.1f}) ---\n{sample}\n---")

    def draw(plt):
        fig = plt.figure(figsize=(11, 4))
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(losses, alpha=0.25, color="C0")
        ax.plot(smooth(losses, 50), color="C0", label="training")
        ax.plot(*zip(*vals), "o-", color="C1", label="validation")
        ax.set(title="bits per character", xlabel="step", ylim=(1, 5))
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        ax.axis("off")
        ax.text(0, 1, "\n".join(line[:70] for line in sample.splitlines()[:22]),
                family="monospace", fontsize=7, va="top")
        ax.set_title(title)
        fig.suptitle(f"{name}: {bits:.3f} validation bits per character", y=1.02)
        return fig

    save_figure(args.figure, draw)
    return bits


def classifier_check(x_train, y_train, x_test, samples):
    """How a classifier of real digits (sklearn's logistic regression, on [-1, 1] pixels)
    reads ``samples``: ((confidence, classes) of the samples, of real held-out digits, of
    uniform noise). Confidence: the mean top probability; classes: how many of the 10 take at
    least 2% of the predictions (mode coverage)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000).fit(x_train, y_train)

    def read(x):
        p = clf.predict_proba(np.clip(x, -1, 1))
        counts = np.bincount(p.argmax(1), minlength=10)
        return float(p.max(1).mean()), int((counts >= 0.02 * len(x)).sum())

    noise = np.random.default_rng(1).uniform(-1, 1, samples.shape)
    return read(samples), read(x_test), read(noise)


def sample_grid(fig, samples, what: str) -> None:
    """32 of the 8x8 ``samples`` (pixels in [-1, 1]) on the right two thirds of ``fig``."""
    for k in range(min(32, len(samples))):
        a = fig.add_subplot(4, 12, 12 * (k // 8) + 5 + k % 8)
        a.imshow(np.asarray(samples[k]).reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
        a.set_xticks([])
        a.set_yticks([])
    fig.text(0.66, 0.93, what, ha="center")
