"""lamina's versions of the network workloads (``nets.py``), written with lamina's layers as a
user would: ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.Flatten``, ``nn.Linear``, ``nn.LayerNorm``,
``nn.MultiheadAttention``, ``nn.GELU``, ``nn.functional.scaled_dot_product_attention``,
``optim.SGD``. The initial parameters are loaded by their PyTorch names with
``load_state_dict`` (the same numpy arrays every peer loads).
"""

from __future__ import annotations

import numpy as np

from peers import Runner


def _models():
    import lamina as lm
    from lamina import nn

    class CNN(nn.Module):
        def __init__(self, c1: int, c2: int, flat: int, classes: int):
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(flat, classes)

        def __call__(self, x):
            x = self.pool(lm.relu(self.conv1(x)))
            x = self.pool(lm.relu(self.conv2(x)))
            return self.fc(self.flatten(x))

    class Block(nn.Module):
        """A pre-LN Transformer block with causal self-attention."""

        def __init__(self, e: int, heads: int, hidden: int):
            self.ln1 = nn.LayerNorm(e)
            self.attn = nn.MultiheadAttention(e, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(e)
            self.fc1 = nn.Linear(e, hidden)
            self.act = nn.GELU(approximate="tanh")
            self.fc2 = nn.Linear(hidden, e)

        def __call__(self, x):
            t = x.shape[1]
            causal = np.triu(np.ones((t, t), bool), 1)  # True: masked out (PyTorch's MHA)
            a = self.ln1(x)
            h = x + self.attn(a, a, a, attn_mask=causal, need_weights=False, is_causal=True)[0]
            return h + self.fc2(self.act(self.fc1(self.ln2(h))))

    return CNN, Block


def _loaded(model, params: dict):
    """``model`` with the benchmark's initial parameters (PyTorch names), checked complete."""
    missing, unexpected = model.load_state_dict({k: v.copy() for k, v in params.items()})
    if missing or unexpected:
        raise RuntimeError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
    return model


def _fetch_state(model, params: dict):
    """``fetch`` for a train step's Runner: [loss, *parameters] in ``params``' order, each read
    through its PyTorch name (``model.fc.weight`` is a Linear's [out, in] view of ``fc.w``)."""

    def read(name):
        obj = model
        for part in name.split("."):
            obj = getattr(obj, part)
        return np.array(obj)

    return lambda loss: [np.asarray(loss), *(read(name) for name in params)]


def cnn_train(inputs: dict, backend: str) -> Runner:
    import lamina as lm
    from lamina import nn, optim

    params = inputs["params"]
    CNN, _ = _models()
    c1, c2 = params["conv1.weight"].shape[0], params["conv2.weight"].shape[0]
    classes, flat = params["fc.weight"].shape
    model = _loaded(CNN(c1, c2, flat, classes), params)
    opt = optim.SGD(model.parameters(), lr=inputs["lr"])

    @lm.compile(backend=backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    x, y = inputs["x"], inputs["y"]
    return Runner(lambda: train_step(x, y), _fetch_state(model, params))


def transformer_train(inputs: dict, backend: str) -> Runner:
    import lamina as lm
    from lamina import nn, optim

    params = inputs["params"]
    _, Block = _models()
    hidden, e = params["fc1.weight"].shape
    model = _loaded(Block(e, inputs["heads"], hidden), params)
    opt = optim.SGD(model.parameters(), lr=inputs["lr"])

    @lm.compile(backend=backend)
    def train_step(x, target):
        loss = nn.functional.mse_loss(model(x), target)
        opt.minimize(loss)
        return loss

    x, target = inputs["x"], inputs["target"]
    return Runner(lambda: train_step(x, target), _fetch_state(model, params))


def attention(inputs: dict, backend: str) -> Runner:
    """Causal scaled dot-product attention, forward and the gradients of sum(out * dout) for
    q, k and v, in one compiled function."""
    import lamina as lm
    from lamina import nn

    def fwd_bwd(q, k, v, dout):
        def loss(q, k, v):
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return (out * dout).sum(), out

        (_, out), grads = lm.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return (out, *grads)

    f = lm.compile(fwd_bwd, backend=backend, name="attention_fwd_bwd")
    args = tuple(inputs[k] for k in ("q", "k", "v", "dout"))
    return Runner(lambda: f(*args), lambda out: [np.asarray(o) for o in out])


def lstm_train(inputs: dict, backend: str) -> Runner:
    """nn.LSTM (one lm.scan over time), loss mean(h_T^2), one SGD step."""
    import lamina as lm
    from lamina import nn, optim

    params = inputs["params"]
    hidden4, size = params["lstm.weight_ih_l0"].shape

    class Net(nn.Module):
        def __init__(self):
            self.lstm = nn.LSTM(size, hidden4 // 4)

    model = _loaded(Net(), params)
    opt = optim.SGD(model.parameters(), lr=inputs["lr"])

    @lm.compile(backend=backend)
    def train_step(x):
        _, (h, _) = model.lstm(x)
        loss = (h[-1] * h[-1]).mean()
        opt.minimize(loss)
        return loss

    x = inputs["x"]
    return Runner(lambda: train_step(x), _fetch_state(model, params))


BUILDERS = {"cnn_train": cnn_train, "transformer_train": transformer_train,
            "attention": attention, "lstm_train": lstm_train}
