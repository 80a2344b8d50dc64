"""Architectures by short spec, safe checkpoints, and the embedded model zoo.

Specs: ``mlp:100,100:relu`` (hidden sizes, activation relu|leakyrelu|tanh|sigmoid),
``mlp:1024x3:tanh`` (three hidden layers of 1024), ``cnn-small`` (2 conv + 2 linear, Wong & Kolter
2018), ``cnn-medium`` (4 conv + 3 linear). Every feedforward model starts with the data set's
:class:`~nonuniform.Normalize`, so it takes inputs in the data set's own domain. Recurrent specs
``rnn:64`` (tanh; ``rnn:64:relu``), ``lstm:32``, ``gru:32x2`` (2 stacked layers) build a
:class:`~nonuniform.SequenceClassifier` reading an image as a sequence of rows.

A checkpoint is a ``torch.save`` dict of tensors and plain values only, loaded with
``weights_only=True`` (no arbitrary pickle); see :func:`save_checkpoint` for its keys.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..modules import Normalize, SequenceClassifier

FORMAT = "nonuniform-checkpoint-v1"
ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ModelError(ValueError):
    """Unknown model name or spec, or a checkpoint that cannot be loaded."""


@dataclass
class ModelCard:
    """What is known about a trained model: provenance, recipe and measured accuracy."""

    name: str
    arch: str
    dataset: str
    input_shape: tuple[int, ...]
    domain: tuple[float, float]
    class_names: tuple[str, ...]
    mean: list[float]
    std: list[float]
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    command: str = ""
    source: str = ""  # "embedded:<name>" or "<path>"
    sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_training(cls, name: str, arch: str, info, config, metrics: dict, command: str) -> ModelCard:
        """Card of a model trained by :func:`nonuniform.zoo.train.train` on data set ``info``."""
        return cls(
            name=name,
            arch=arch,
            dataset=info.name,
            input_shape=info.input_shape,
            domain=info.domain,
            class_names=info.class_names,
            mean=[info.mean],
            std=[info.std],
            recipe={"optimizer": "Adam, one-cycle lr", **config.to_dict()},
            metrics=metrics,
            command=command,
        )


def parse_mlp(spec: str) -> tuple[list[int], str]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "mlp":
        raise ModelError(f"bad MLP spec '{spec}'; expected e.g. 'mlp:100,100:relu' or 'mlp:1024x3:tanh'")
    act = parts[2] if len(parts) == 3 else "relu"
    if act not in ACTIVATIONS:
        raise ModelError(f"unknown activation '{act}' in '{spec}'; choose one of {', '.join(ACTIVATIONS)}")
    try:
        if "x" in parts[1]:
            width, depth = parts[1].split("x")
            hidden = [int(width)] * int(depth)
        else:
            hidden = [int(h) for h in parts[1].split(",") if h]
    except ValueError:
        raise ModelError(f"bad hidden sizes '{parts[1]}' in '{spec}'") from None
    if not hidden or min(hidden) <= 0:
        raise ModelError(f"'{spec}' needs at least one positive hidden size")
    return hidden, act


def build_model(
    arch: str,
    input_shape: tuple[int, ...] = (1, 28, 28),
    num_classes: int = 10,
    mean: float | list[float] = 0.0,
    std: float | list[float] = 1.0,
) -> nn.Module:
    """An untrained model for ``arch`` (see module docstring), normalisation first."""
    norm = Normalize(mean, std)
    c, h, w = (input_shape + (1, 1))[:3] if len(input_shape) < 3 else input_shape
    if arch.startswith("mlp"):
        hidden, act = parse_mlp(arch)
        layers: list[nn.Module] = [norm, nn.Flatten()]
        prev = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(prev, size), ACTIVATIONS[act]()]
            prev = size
        layers.append(nn.Linear(prev, num_classes))
        return nn.Sequential(*layers)
    if arch == "cnn-small":
        return nn.Sequential(
            norm,
            nn.Conv2d(c, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )
    if arch == "cnn-medium":
        return nn.Sequential(
            norm,
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
    if arch.split(":")[0].removeprefix("bi") in RECURRENT_KINDS:
        return build_sequence_model(arch, input_shape, num_classes)
    raise ModelError(
        f"unknown architecture '{arch}'; use 'mlp:<sizes>:<act>', 'cnn-small', 'cnn-medium', "
        "'rnn:<hidden>[x<layers>][:tanh|relu]', 'lstm:<hidden>[x<layers>]' or 'gru:<hidden>[x<layers>]' "
        "(prefix 'bi' for bidirectional: 'bilstm:16')"
    )


RECURRENT_KINDS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def build_sequence_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> SequenceClassifier:
    """``lstm:32`` / ``gru:32x2`` / ``rnn:64:relu`` / ``bilstm:16`` (bidirectional): a recurrent
    module reading each sample as rows of its last axis (a 28x28 image is 28 steps of 28 pixels)
    and a linear head.

    No Normalize layer: sequence models take inputs in [0, 1] as they are.
    """
    parts = arch.split(":")
    bidirectional = parts[0].startswith("bi")
    kind = parts[0].removeprefix("bi")
    try:
        hidden, _, layers = parts[1].partition("x")
        hidden_size, num_layers = int(hidden), int(layers or 1)
    except (IndexError, ValueError):
        raise ModelError(f"bad recurrent spec '{arch}'; expected e.g. 'lstm:32' or 'gru:32x2'") from None
    extra: dict = {}
    if kind == "rnn":
        extra["nonlinearity"] = parts[2] if len(parts) > 2 else "tanh"
        if extra["nonlinearity"] not in ("tanh", "relu"):
            raise ModelError(f"'{arch}': an RNN's nonlinearity is tanh or relu")
    elif len(parts) > 2:
        raise ModelError(f"'{arch}': only 'rnn' specs take a nonlinearity")
    if hidden_size <= 0 or num_layers <= 0:
        raise ModelError(f"'{arch}' needs a positive hidden size and layer count")
    rnn = RECURRENT_KINDS[kind](
        input_shape[-1], hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, **extra
    )
    return SequenceClassifier(rnn, nn.Linear(hidden_size * (1 + bidirectional), num_classes))


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path) -> None:
    """Write ``model``'s weights with its card. Keys: format, arch, dataset, input_shape,
    domain, class_names, mean, std, recipe, metrics, command, state_dict."""
    payload = {k: v for k, v in card.to_dict().items() if k not in ("name", "source", "sha256")}
    payload["input_shape"] = list(card.input_shape)
    payload["domain"] = list(card.domain)
    payload["class_names"] = list(card.class_names)
    payload["format"] = FORMAT
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_checkpoint(path: str | Path, name: str | None = None, source: str | None = None):
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception:  # noqa: BLE001 - torch raises many types for corrupt files
        # torch's own text suggests weights_only=False, i.e. running arbitrary pickled code: not
        # advice to pass on for a file that failed the safe loader.
        raise ModelError(
            f"{path}: not a loadable nonuniform checkpoint (damaged, truncated, or not written by "
            "torch.save with tensors and plain values only); re-create it with `nonuniform train` or "
            "nonuniform.zoo.models.save_checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            f"{path}: not a nonuniform checkpoint (no '{FORMAT}' format tag); plain state dicts "
            "need their architecture: build the model yourself and call load_state_dict"
        )
    card = ModelCard(
        name=name or path.stem,
        arch=payload["arch"],
        dataset=payload["dataset"],
        input_shape=tuple(payload["input_shape"]),
        domain=tuple(payload["domain"]),
        class_names=tuple(payload["class_names"]),
        mean=list(payload["mean"]),
        std=list(payload["std"]),
        recipe=payload.get("recipe", {}),
        metrics=payload.get("metrics", {}),
        command=payload.get("command", ""),
        source=source or str(path),
        sha256=_sha256(path),
    )
    model = build_model(card.arch, card.input_shape, len(card.class_names), card.mean, card.std)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ModelError(
            f"{path}: weights do not fit architecture '{card.arch}' ({detail}); the checkpoint's "
            "arch spec and state dict disagree"
        ) from None
    return model.eval(), card


def assets_dir() -> Path:
    return Path(str(resources.files("nonuniform.zoo") / "assets"))


def embedded_models() -> dict[str, Path]:
    """Names and paths of the models shipped inside the package."""
    return {p.stem: p for p in sorted((assets_dir() / "models").glob("*.pt"))}


def load_model(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    input_shape: tuple[int, ...] | None = None,
    domain: tuple | None = None,
):
    """``(model, card)`` for an embedded model's name, a checkpoint path or an ``.onnx`` file;
    the model is in eval mode on ``device``. A card's ``source`` (``embedded:NAME`` or a path)
    loads the same model again.

    ONNX files (read by :func:`~nonuniform.frontends.onnx_read.load_onnx`) carry no data set or input
    domain: ``domain`` (``(lo, hi)``, floats or arrays shaped like one input) is recorded in the
    card when given, else the card's domain is None and certification asks for one.
    ``input_shape`` is needed only when the file leaves the per-sample shape symbolic.
    """
    models = embedded_models()
    key = str(name_or_path).removeprefix("embedded:")
    if key in models:
        model, card = load_checkpoint(models[key], name=key, source=f"embedded:{key}")
    elif key.lower().endswith(".onnx"):
        model, card = load_onnx_model(key, input_shape, domain)
    elif Path(key).exists():
        model, card = load_checkpoint(Path(key).resolve())  # absolute: `verify` works from anywhere
    else:
        raise ModelError(
            f"'{key}' is neither an embedded model nor an existing file; embedded models: "
            f"{', '.join(models) or '(none)'} (see `nonuniform models`)"
        )
    if domain is not None and card.domain is not None and not key.lower().endswith(".onnx"):
        card = replace(card, domain=domain)  # the caller's domain overrides the recorded one
    return model.to(device).eval(), card


def load_onnx_model(path: str | Path, input_shape=None, domain=None):
    """``(GraphModel, card)`` for an ONNX classifier."""
    from ..frontends.onnx_read import load_onnx

    path = Path(path).resolve()
    if not path.exists():
        raise ModelError(f"{path}: file not found")
    model = load_onnx(path, input_shape)
    card = ModelCard(
        name=path.stem,
        arch="onnx",
        dataset="",
        input_shape=model.input_shape,
        domain=domain,  # type: ignore[arg-type]
        class_names=tuple(str(k) for k in range(model.num_classes)),
        mean=[],
        std=[],
        source=str(path),
        sha256=_sha256(path),
    )
    return model, card
