"""Training regimes: spectral normalisation bakes plain, normalised weights."""

from __future__ import annotations

import torch
from torch import nn

from nonuniform.zoo.models import build_model
from nonuniform.zoo.train import TrainConfig, train


def _toy_data(n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 5, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0].mean(1) > 0.5).long()
    return x, y


def test_spectral_norm_training_leaves_plain_normalised_weights():
    x, y = _toy_data()
    torch.manual_seed(0)
    model = build_model("bilstm:8", (1, 6, 5), 4)
    fresh_keys = set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, x, y, TrainConfig(epochs=3, batch_size=64, lr=1e-2, spectral_norm=True))
    assert set(model.state_dict()) == fresh_keys  # loadable into an unparametrised model
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    weights = {k: v for k, v in model.state_dict().items() if "weight" in k and v.dim() >= 2}
    assert len(weights) == 5  # input and hidden weights of both directions, and the head
    for k, w in weights.items():
        assert torch.linalg.matrix_norm(w, 2) < 1.1, f"{k} is not spectrally normalised"
        assert not torch.equal(w, before[k])


def test_spectral_norm_is_off_by_default():
    x, y = _toy_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 4))
    train(model, x, y, TrainConfig(epochs=8, batch_size=64, lr=3e-2))
    norms = [torch.linalg.matrix_norm(m.weight, 2) for m in model if isinstance(m, nn.Linear)]
    assert max(norms) > 1.1  # ordinary training is not constrained (so the test above can fail)
