"""MNIST and Fashion-MNIST from the original IDX ``.gz`` files.

Where files are looked for, in order: the ``data_dir`` argument (``--data-dir``), the
``NONUNIFORM_DATA`` environment variable, then the per-user cache (``$XDG_CACHE_HOME/nonuniform``
or ``~/.cache/nonuniform``), where missing files are downloaded and checked against the published
md5 sums. A directory may hold the files directly or in a subdirectory named after the data set
(``<dir>/mnist/train-images-idx3-ubyte.gz``), which is the layout of ``../shared/data``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "NONUNIFORM_DATA"


class DataError(RuntimeError):
    """A data set cannot be found, downloaded or read; the message says which file and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: dict[str, tuple[str, str]]  # key -> (file name, md5 of the .gz)
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    mean: float  # of the training pixels in [0, 1]: the models' Normalize layer
    std: float
    input_shape: tuple[int, ...] = (1, 28, 28)
    domain: tuple[float, float] = (0.0, 1.0)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist",
        {
            "train-images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        tuple(str(i) for i in range(10)),
        0.1307,
        0.3081,
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        {
            "train-images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        0.2860,
        0.3530,
    ),
}


@dataclass
class Dataset:
    """Inputs ``(N, 1, 28, 28)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Unpacks as ``inputs, labels = load_dataset(...)``.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    class_names: tuple[str, ...]
    domain: tuple[float, float] = (0.0, 1.0)
    source: str = field(default="")

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.inputs, self.labels))

    def __len__(self) -> int:
        return len(self.labels)


def dataset_info(name: str) -> DatasetInfo:
    key = name.lower().replace("_", "-")
    if key == "fashion":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DataError(f"unknown data set '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[key]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nonuniform"


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one gzip-compressed IDX file (uint8 data) with every structural check."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); delete it and download it again") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX header; delete it and download it again")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x{expected_magic:08x}): this is "
            "not the IDX file the name says; check the file or download it again"
        )
    ndim = magic & 0xFF
    dims = (count, *struct.unpack(f">{ndim - 1}I", raw[8 : 4 + 4 * ndim]))
    header = 4 + 4 * ndim
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(
            f"{path}: holds {len(raw) - header} bytes of data but its header announces {size} "
            f"(shape {dims}); the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


Opener = Callable[[str], "object"]


def download(info: DatasetInfo, key: str, dest_dir: Path, opener: Opener = urllib.request.urlopen) -> Path:
    """Fetch one file into ``dest_dir`` from the first mirror that answers with the right md5."""
    fname, md5 = info.files[key]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / fname
    errors = []
    for mirror in info.mirrors:
        url = mirror + fname
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            with opener(url) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except Exception as e:  # noqa: BLE001 - any network failure means "try the next mirror"
            errors.append(f"{url}: {e}")
            tmp.unlink(missing_ok=True)
            continue
        got = md5sum(tmp)
        if got != md5:
            errors.append(f"{url}: md5 {got} != published {md5}")
            tmp.unlink(missing_ok=True)
            continue
        tmp.replace(dest)
        return dest
    raise DataError(
        f"could not download {info.name}/{fname} ({'; '.join(errors)}); download it by hand into "
        f"{dest_dir} or pass --data-dir / set {ENV_VAR} to a directory that holds it"
    )


def _locate(
    info: DatasetInfo, key: str, data_dir: str | Path | None, allow_download: bool, opener: Opener
) -> Path:
    fname = info.files[key][0]
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if explicit is not None:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data directory {root} does not exist; create it, or point --data-dir / "
                f"{ENV_VAR} at the directory holding the {info.name} .gz files"
            )
        for cand in (root / info.name / fname, root / fname):
            if cand.exists():
                return cand
        raise DataError(
            f"{root / info.name / fname} not found (nor {root / fname}); put the original "
            f"{info.name} IDX .gz files there, or omit --data-dir to download into {cache_dir()}"
        )
    cached = cache_dir() / info.name / fname
    if cached.exists():
        return cached
    if not allow_download:
        raise DataError(f"{cached} not found and downloading is disabled")
    return download(info, key, cached.parent, opener)


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    opener: Opener = urllib.request.urlopen,
) -> Dataset:
    """Load ``split`` ("train" or "test") of MNIST or Fashion-MNIST as tensors."""
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}'; choose 'train' or 'test'")
    img_path = _locate(info, f"{split}-images", data_dir, download, opener)
    lbl_path = _locate(info, f"{split}-labels", data_dir, download, opener)
    images = read_idx(img_path, 0x00000803)
    labels = read_idx(lbl_path, 0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} "
            "labels; one of the files is from another data set or split"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, info.name, split, info.class_names, info.domain, str(img_path.parent))
