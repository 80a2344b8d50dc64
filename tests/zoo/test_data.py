"""Loading the original IDX files, the download path (mocked opener) and every error path."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from nonuniform.zoo.data import DATASETS, DataError, download, load_dataset, read_idx


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_data_counts_shapes_labels(data_dir, name):
    train = load_dataset(name, "train", data_dir)
    test = load_dataset(name, "test", data_dir)
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(test.inputs.min()) and float(test.inputs.max()) <= 1.0
    counts = np.bincount(test.labels.numpy(), minlength=10)
    if name == "mnist":
        assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
        assert abs(float(train.inputs.mean()) - 0.1307) < 1e-3
    else:
        assert (counts == 1000).all() and (np.bincount(train.labels.numpy()) == 6000).all()
        assert abs(float(train.inputs.mean()) - 0.2860) < 1e-3
    assert len(test.class_names) == 10 and test.domain == (0.0, 1.0)
    x, y = test  # unpacks as (inputs, labels)
    assert len(x) == len(y) == len(test)


def _idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload


def _write_gz(path: Path, raw: bytes) -> None:
    path.write_bytes(gzip.compress(raw))


def test_corrupt_truncated_and_wrong_magic(tmp_path):
    p = tmp_path / "a.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"a\.gz: not a readable gzip file"):
        read_idx(p, 0x803)
    _write_gz(p, _idx_bytes(0x803, (2, 28, 28), b"\0" * 100))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(p, 0x803)
    _write_gz(p, _idx_bytes(0x801, (2,), b"\0\1"))
    with pytest.raises(DataError, match="wrong magic number 0x00000801"):
        read_idx(p, 0x803)
    full = gzip.compress(_idx_bytes(0x801, (2,), b"\0\1"))
    p.write_bytes(full[: len(full) // 2])  # a cut-off download
    with pytest.raises(DataError, match="a.gz"):
        read_idx(p, 0x801)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", "test", tmp_path / "nope")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz not found"):
        load_dataset("mnist", "test", tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("cifar", "test", tmp_path)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_checks_md5_and_falls_back_to_next_mirror(tmp_path, monkeypatch):
    labels = _idx_bytes(0x801, (3,), bytes([1, 2, 3]))
    blob = gzip.compress(labels)
    info = DATASETS["mnist"]
    fname = info.files["test-labels"][0]
    fake = type(info)(
        **{
            **info.__dict__,
            "files": {**info.files, "test-labels": (fname, hashlib.md5(blob).hexdigest())},
        }
    )
    calls = []

    def opener(url):
        calls.append(url)
        if url.startswith(info.mirrors[0]):
            return _Response(b"corrupted bytes")  # wrong md5: rejected
        return _Response(blob)

    path = download(fake, "test-labels", tmp_path, opener)
    assert path.read_bytes() == blob and len(calls) == 2
    assert read_idx(path, 0x801).tolist() == [1, 2, 3]

    def offline(url):
        raise OSError("network unreachable")

    with pytest.raises(DataError, match="could not download mnist/t10k-labels"):
        download(fake, "test-labels", tmp_path / "other", offline)
    assert not list((tmp_path / "other").glob("*.part"))


def test_download_into_cache_when_no_dir_given(tmp_path, monkeypatch, data_dir):
    # With no data_dir and no env var, files come from the cache, downloaded on demand.
    monkeypatch.delenv("NONUNIFORM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    served = []

    def opener(url):
        name = url.rsplit("/", 1)[1]
        served.append(name)
        return _Response((data_dir / "mnist" / name).read_bytes())

    ds = load_dataset("mnist", "test", opener=opener)
    assert len(ds) == 10000 and sorted(served) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert (tmp_path / "nonuniform" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
