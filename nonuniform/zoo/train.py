"""Normal and PGD adversarial training (Madry et al. 2018) and accuracy evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    adv_eps: float = 0.0  # L-inf budget of PGD training; 0 means normal training
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # default 2.5 * eps / steps
    seed: int = 0
    #: train every weight matrix (linear, conv, recurrent input and hidden-to-hidden) under
    #: spectral normalisation (Miyato et al. 2018); the saved weights are the normalised ones
    spectral_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float | None = None,
    domain: tuple[float, float] = (0.0, 1.0),
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted L-inf PGD on the cross-entropy, projected on the eps-ball and the domain."""
    step_size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    lo, hi = (x - eps).clamp(*domain), (x + eps).clamp(*domain)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = lo + noise * (hi - lo)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
            (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * g.sign(), lo), hi)
    return x_adv.detach()


def spectral_normalise(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Put every weight with >= 2 dimensions under a spectral-norm parametrisation (one power
    iteration per forward pass); returns the (module, name) pairs for :func:`bake`."""
    from torch.nn.utils.parametrizations import spectral_norm

    done = []
    for module in list(model.modules()):
        for name, p in list(module.named_parameters(recurse=False)):
            if name.startswith("weight") and p.dim() >= 2:
                spectral_norm(module, name)
                done.append((module, name))
    return done


def bake(normalised: list[tuple[nn.Module, str]]) -> None:
    """Replace each parametrised weight by its current normalised value (a plain parameter), so
    checkpoints and the bound engine see ordinary weights."""
    from torch.nn.utils import parametrize

    for module, name in normalised:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def train(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    config: TrainConfig,
    domain: tuple[float, float] = (0.0, 1.0),
    progress: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Train in place with Adam (cosine schedule); PGD examples when ``config.adv_eps > 0``,
    spectral normalisation when ``config.spectral_norm``.

    ``progress(step, total_steps, loss)`` is called after every optimiser step (the CLI shows a
    bar on a terminal and a line per epoch otherwise)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    normalised = spectral_normalise(model) if config.spectral_norm else []
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(labels)
    steps_total = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps_total)
    step = 0
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            x, y = inputs[idx], labels[idx]
            if config.adv_eps > 0:
                model.eval()
                x = pgd_linf(
                    model,
                    x,
                    y,
                    config.adv_eps,
                    config.pgd_steps,
                    config.pgd_step_size,
                    domain,
                    generator=gen,
                )
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress(step, steps_total, loss.item())
    model.eval()
    with torch.no_grad():
        model(inputs[:1])  # eval mode: the weights of the last power iteration, no update
    bake(normalised)
    return model


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    eps: float = 0.0,
    steps: int = 20,
    batch_size: int = 500,
    domain: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> dict[str, float]:
    """Clean accuracy and, if ``eps > 0``, accuracy under PGD (``steps`` steps, random start)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    clean = robust = 0
    for start in range(0, len(labels), batch_size):
        x, y = inputs[start : start + batch_size], labels[start : start + batch_size]
        with torch.no_grad():
            clean += int((model(x).argmax(1) == y).sum())
        if eps > 0:
            x_adv = pgd_linf(model, x, y, eps, steps, domain=domain, generator=gen)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
    out = {"clean_accuracy": clean / len(labels)}
    if eps > 0:
        out[f"pgd_accuracy@{eps:g}"] = robust / len(labels)
    return out


def fit_full_batch(
    model: nn.Module, inputs: Tensor, labels: Tensor, steps: int, lr: float = 0.01
) -> nn.Module:
    """Full-batch Adam on the cross-entropy: for the small nets of tests and experiments
    (toy 2-D nets, the 784-16-16-10 MILP net). Returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_checkpoint(
    arch: str,
    dataset: str,
    out,
    config: TrainConfig,
    data_dir=None,
    progress: Callable[[int, int, float], None] | None = None,
    command: str = "",
):
    """Build ``arch`` for ``dataset``, train it (normally or with PGD), evaluate it on the test set
    (clean and PGD accuracy at eps 0.1) and save a checkpoint with its card at ``out``.
    Returns ``(model, card)``. Seeded by ``config.seed``, initial weights included."""
    from pathlib import Path

    from .data import dataset_info, load_dataset
    from .models import ModelCard, build_model, save_checkpoint

    info = dataset_info(dataset)
    torch.manual_seed(config.seed)  # the initial weights too: the same seed, the same model
    net = build_model(arch, info.input_shape, len(info.class_names), info.mean, info.std)
    tr = load_dataset(info.name, "train", data_dir)
    te = load_dataset(info.name, "test", data_dir)
    train(net, tr.inputs, tr.labels, config, progress=progress)
    metrics = evaluate(net, te.inputs, te.labels, eps=0.1)
    card = ModelCard.for_training(Path(out).stem, arch, info, config, metrics, command)
    save_checkpoint(net, card, Path(out))
    return net, card
