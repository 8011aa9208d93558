import gzip
import pickle
import struct

import numpy as np
import pytest

from qpsnn.sw.datasets import load_dataset, read_idx
from qpsnn.sw.errors import DatasetError


def write_idx(path, array: np.ndarray, compress=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype.type], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_mnist(root, n_train=12, n_test=5, compress=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8), compress)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_loader(tmp_path, compress):
    make_mnist(tmp_path, compress=compress)
    d = load_dataset("mnist-idx", tmp_path)
    assert d.train.images.shape == (12, 1, 28, 28) and d.test.images.shape == (5, 1, 28, 28)
    assert d.train.images.dtype == np.uint8 and d.train.labels.dtype == np.int64
    raw = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else "")))
    assert np.array_equal(raw[:, None], d.train.images)


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist-idx", tmp_path / "missing")
    with pytest.raises(DatasetError, match="found"):
        load_dataset("mnist-idx", tmp_path)
    make_mnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DatasetError, match="IDX data has"):
        load_dataset("mnist-idx", tmp_path)
    f.write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(DatasetError, match="bad magic"):
        load_dataset("mnist-idx", tmp_path)
    make_mnist(tmp_path, n_train=3)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DatasetError, match="do not match"):
        load_dataset("mnist-idx", tmp_path)


def make_cifar(root, per_batch=4, batches=2):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i + 1}" for i in range(batches)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * per_batch}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_cifar10_loader(tmp_path):
    folder = make_cifar(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert d.train.images.shape == (8, 3, 32, 32) and d.test.images.shape == (4, 3, 32, 32)
    with (folder / "test_batch").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert np.array_equal(d.test.images[1, 2].ravel(), raw[b"data"][1, 2048:])  # channel-major rows, as documented
    assert d.test.labels.tolist() == raw[b"labels"]


def test_cifar10_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "none")
    folder = make_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing"):
        load_dataset("cifar10", tmp_path)


def test_builtin_splits():
    d = load_dataset("digits")
    assert len(d.test.labels) == 360 and len(d.train.labels) == 1437 and d.in_shape == (1, 8, 8)
    assert d.train.images.max() == 255
    assert np.array_equal(load_dataset("digits").test.labels, d.test.labels)  # fixed split
    m = load_dataset("mnist5k")
    assert len(m.train.labels) == 4000 and len(m.test.labels) == 1000 and m.in_shape == (1, 28, 28)
    h = load_dataset("mnist5k-12")  # the same split at 12x12: the centre 24x24 averaged over 2x2 blocks
    assert h.in_shape == (1, 12, 12) and np.array_equal(h.test.labels, m.test.labels)
    block = m.test.images[7, 0, 2 + 6:2 + 8, 2 + 10:2 + 12].astype(int)
    assert h.test.images[7, 0, 3, 5] == (block.sum() + 2) // 4


def test_unknown_and_pathless():
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="--data-path"):
        load_dataset("cifar10")
