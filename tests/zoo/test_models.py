"""Architectures, safe checkpoints, the embedded zoo and its cards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonuniform import UnsupportedModelError, compute_bounds, load_model
from nonuniform.zoo.models import (
    ModelCard,
    ModelError,
    build_model,
    embedded_models,
    load_checkpoint,
    save_checkpoint,
)
from nonuniform.zoo.samples import load_samples
from nonuniform.zoo.train import evaluate

FEEDFORWARD = ["fashion-mlp", "fashion-mlp-pgd", "mnist-cnn-small", "mnist-mlp", "mnist-mlp-pgd"]
RECURRENT = [f"{ds}-{kind}" for ds in ("fashion", "mnist") for kind in ("gru", "lstm", "rnn")]
EMBEDDED = sorted(FEEDFORWARD + RECURRENT)
#: Clean test accuracy every embedded model must keep (sequence models are small by design).
MIN_ACCURACY = {"mnist": 0.95, "fashion-mnist": 0.80}
MIN_ACCURACY_RECURRENT = {"mnist": 0.93, "fashion-mnist": 0.80}


@pytest.mark.parametrize(
    "arch",
    ["mlp:100,100:relu", "mlp:32x3:tanh", "mlp:8:sigmoid", "cnn-small", "cnn-medium"]
    + ["rnn:8", "rnn:8x2:relu", "lstm:8", "gru:8x2"],
)
def test_architectures_are_boundable(arch):
    model = build_model(arch, mean=0.1307, std=0.3081).eval()
    x = torch.rand(2, 1, 28, 28)
    lb, ub = compute_bounds(model, x - 0.001, x + 0.001, method="ibp")
    assert lb.shape == (2, 9) and (lb <= ub).all()


def test_bad_specs():
    for spec in (
        "mlp:abc:relu",
        "mlp:10:swish",
        "resnet",
        "mlp::relu",
        "lstm",
        "lstm:0",
        "gru:8:tanh",
        "rnn:8:gelu",
    ):
        with pytest.raises(ModelError):
            build_model(spec)


def _card(arch="mlp:8:relu") -> ModelCard:
    return ModelCard("t", arch, "mnist", (1, 28, 28), (0.0, 1.0), tuple("0123456789"), [0.1], [0.3])


def test_recurrent_checkpoint_roundtrip(tmp_path):
    model = build_model("gru:8x2")
    save_checkpoint(model, _card("gru:8x2"), tmp_path / "g.pt")
    back, card = load_checkpoint(tmp_path / "g.pt")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), model.eval()(x)) and card.arch == "gru:8x2"


def test_checkpoint_roundtrip_wrong_arch_and_corrupt(tmp_path):
    model = build_model("mlp:8:relu")
    path = tmp_path / "m.pt"
    save_checkpoint(model, _card(), path)
    back, card = load_checkpoint(path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(back(x), model.eval()(x)) and card.arch == "mlp:8:relu" and card.sha256
    save_checkpoint(model, _card("mlp:9:relu"), tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="do not fit architecture 'mlp:9:relu'"):
        load_checkpoint(tmp_path / "wrong.pt")
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="bad.pt: not a loadable"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="not a nonuniform checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="neither an embedded model nor an existing file"):
        load_model("no-such-model")


def test_unsupported_layer_in_user_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with pytest.raises(UnsupportedModelError, match=r"layer '1' \(GroupNorm\)"):
        compute_bounds(model, torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28))


def test_embedded_zoo_and_cards_match_measurement():
    assert sorted(embedded_models()) == EMBEDDED
    measured = {}
    for name in EMBEDDED:
        model, card = load_model(name)
        x, y = load_samples(card.dataset)
        assert not model.training and card.command.startswith("python experiments/build_assets.py")
        m = evaluate(model, x, y, eps=0.1)
        # The card was measured on exactly these 100 images with the same seeded PGD: tolerance
        # 2 images covers BLAS differences that can flip a borderline attack.
        assert abs(m["clean_accuracy"] - card.metrics["shipped_clean_accuracy"]) <= 0.02, name
        assert abs(m["pgd_accuracy@0.1"] - card.metrics["shipped_pgd_accuracy@0.1"]) <= 0.02, name
        floor = (MIN_ACCURACY_RECURRENT if name in RECURRENT else MIN_ACCURACY)[card.dataset]
        assert card.metrics["clean_accuracy"] > floor, name
        measured[name] = m["pgd_accuracy@0.1"]
    # PGD training buys robustness at budget 0.1, measurably.
    assert measured["mnist-mlp-pgd"] > measured["mnist-mlp"] + 0.5
    assert measured["fashion-mlp-pgd"] > measured["fashion-mlp"] + 0.3
