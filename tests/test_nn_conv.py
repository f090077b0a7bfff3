"""The convolution and pooling layers against PyTorch's: parameter names, shapes and default
initialization; a PyTorch ``state_dict`` loads by name; outputs and one SGD step (so every
parameter gradient) match."""

from __future__ import annotations

import numpy as np
import pytest

import lamina as lm
from lamina import nn

torch = pytest.importorskip("torch")


def _load_from(model, tmodel):
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})


LAYERS = [
    ("Conv2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                    groups=2), (2, 4, 7, 6)),
    ("Conv2d", dict(in_channels=3, out_channels=2, kernel_size=(2, 3), dilation=(2, 1),
                    padding="same", bias=False), (1, 3, 5, 6)),
    ("Conv1d", dict(in_channels=2, out_channels=4, kernel_size=3, stride=2), (3, 2, 9)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=2, kernel_size=4, stride=2,
                             padding=1), (2, 4, 3, 3)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2,
                             output_padding=1, groups=2, dilation=1), (1, 4, 3, 2)),
    ("ConvTranspose1d", dict(in_channels=2, out_channels=3, kernel_size=3, stride=3),
     (2, 2, 4)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("cls, kw, shape", LAYERS, ids=[f"{c}-{i}" for i, (c, _, _) in
                                                       enumerate(LAYERS)])
def test_conv_layer_loads_torch_weights_and_trains_like_torch(cls, kw, shape, backend):
    torch.manual_seed(0)
    tlayer = getattr(torch.nn, cls)(**kw).double()
    layer = getattr(nn, cls)(**kw)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in
                                                        tlayer.named_parameters()]
    for (_, p), (_, tp) in zip(layer.named_parameters(), tlayer.named_parameters()):
        assert p.shape == tuple(tp.shape)
    layer = getattr(nn, cls)(**kw, dtype=lm.float64)
    _load_from(layer, tlayer)
    x = np.random.default_rng(1).standard_normal(shape)
    o = np.random.default_rng(2).standard_normal(tuple(tlayer(torch.tensor(x)).shape))
    opt = lm.optim.SGD(layer.parameters(), lr=0.5)

    @lm.compile(backend=backend)
    def step(x):
        y = layer(x)
        opt.minimize((y * o).sum())
        return y

    y = step(x)
    ty = tlayer(torch.tensor(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    (ty * torch.tensor(o)).sum().backward()
    with torch.no_grad():
        for p in tlayer.parameters():
            p -= 0.5 * p.grad
    for name, value in layer.state_dict().items():
        np.testing.assert_allclose(value, tlayer.state_dict()[name].numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def test_default_initialization_is_torch_s():
    """uniform(+-1/sqrt(fan_in)) for weight and bias; fan_in = in/groups * kernel (and
    out/groups * kernel for transposed convolutions, as torch computes it)."""
    for layer, fan_in in [(nn.Conv2d(8, 16, 3, groups=2), 4 * 9),
                          (nn.ConvTranspose2d(8, 6, (2, 3), groups=2), 3 * 6),
                          (nn.Conv1d(5, 7, 4), 5 * 4)]:
        bound = 1 / np.sqrt(fan_in)
        w, b = layer.weight.numpy(), layer.bias.numpy()
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
        assert np.abs(b).max() <= bound
        assert w.dtype == np.float32


def test_pooling_layers_match_torch():
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 8)).astype(np.float32)
    tx = torch.tensor(x)
    pairs = [(nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (nn.AvgPool2d(2, count_include_pad=False, padding=1),
              torch.nn.AvgPool2d(2, count_include_pad=False, padding=1)),
             (nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
             (nn.AdaptiveAvgPool2d((3, 4)), torch.nn.AdaptiveAvgPool2d((3, 4)))]
    for layer, tlayer in pairs:
        got = lm.compile(lambda x, layer=layer: layer(x))(x)
        np.testing.assert_allclose(got, tlayer(tx).numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=repr(layer))
    x1 = x.reshape(6, 9, 8)
    for layer, tlayer in [(nn.MaxPool1d(2), torch.nn.MaxPool1d(2)),
                          (nn.AvgPool1d(3, 1, 1), torch.nn.AvgPool1d(3, 1, 1)),
                          (nn.AdaptiveAvgPool1d(3), torch.nn.AdaptiveAvgPool1d(3))]:
        np.testing.assert_allclose(layer(x1), tlayer(torch.tensor(x1)).numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=repr(layer))


def test_a_small_cnn_trains_in_one_compiled_step():
    class Net(nn.Module):
        def __init__(self):
            self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3)
            self.pool = nn.MaxPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)

        def __call__(self, x):
            h = self.pool(lm.relu(self.conv1(x)))
            return self.gap(lm.relu(self.conv2(h))).reshape(x.shape[0], 8).sum(axis=1)

    lm.random.seed(0)  # the default init, drawn the same whatever ran before
    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["conv1.weight", "conv1.bias",
                                                      "conv2.weight", "conv2.bias"]
    opt = lm.optim.SGD(net.parameters(), lr=0.1)
    x = np.random.default_rng(4).standard_normal((4, 1, 8, 8)).astype(np.float32)

    @lm.compile
    def step(x):
        loss = ((net(x) - 1.0) ** 2).mean()
        opt.minimize(loss)
        return loss

    losses = [float(step(x)) for _ in range(20)]
    assert losses[-1] < losses[0] * 0.5


def test_layer_errors_and_repr():
    with pytest.raises(lm.LaminaError, match="must be divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(lm.LaminaError, match="padding_mode 'reflect' is not supported"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(lm.LaminaError, match="return_indices"):
        nn.MaxPool2d(2, return_indices=True)
    assert repr(nn.Conv2d(1, 16, 3, padding=1)) == repr(torch.nn.Conv2d(1, 16, 3, padding=1))
    assert repr(nn.Conv2d(4, 8, 3, stride=2, groups=2, bias=False)) == repr(
        torch.nn.Conv2d(4, 8, 3, stride=2, groups=2, bias=False))
