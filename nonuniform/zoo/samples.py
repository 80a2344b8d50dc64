"""The embedded test samples: the first 100 test images (with labels) of each data set."""

from __future__ import annotations

import numpy as np
import torch

from .models import assets_dir


def load_samples(dataset: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (100, 1, 28, 28) in [0, 1], labels (100,))`` shipped inside the package."""
    from .data import dataset_info

    name = dataset_info(dataset).name
    with np.load(assets_dir() / "samples" / f"{name}.npz") as z:
        x = torch.from_numpy(z["images"].astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(z["labels"].astype(np.int64))
    return x, y
