"""Evaluate a `.qpsnn` file: integer (golden) accuracy, and the float model's when its checkpoint is beside it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import modelfile
from .datasets import Dataset, load_dataset
from .errors import DatasetError
from .golden import run_golden
from .intnet import IntNet
from .packing import packed_size
from .reports import Report


@dataclass
class EvalReport(Report):
    """``qpsnn eval``: the golden model's accuracy and costs; ``accuracy_float`` is None without the model's
    own ``.pt``."""
    model: str
    dataset: str
    samples: int
    accuracy_int: float
    accuracy_float: float | None
    weight_bytes: int
    file_bytes: int
    spikes_per_sample: float
    sops_per_sample: float


def weight_bytes(net: IntNet) -> int:
    return sum(packed_size(*layer.weight_rows().shape, layer.bits, net.lanes) for layer in net.layers)


def dataset_for(net: IntNet, name: str | None, path: str | None) -> Dataset:
    config = net.provenance.get("config", {}) if isinstance(net.provenance, dict) else {}
    name = name or config.get("dataset")
    if not name:
        raise DatasetError("the model file does not say which data set it was trained on: give --dataset")
    data = load_dataset(name, path or config.get("data_path"))
    if tuple(data.in_shape) != tuple(net.in_shape):
        raise DatasetError(f"data set {name} has images {data.in_shape}, the model takes {tuple(net.in_shape)}")
    return data


def evaluate(path: str | Path, dataset: str | None = None, data_path: str | None = None,
             samples: int | None = None, batch: int = 500, device: torch.device | str = "cpu") -> EvalReport:
    """Integer accuracy from the golden model (CPU, integer arithmetic); the float model's, when its checkpoint
    is beside the file, on ``device``."""
    path = Path(path)
    net = modelfile.load(path)
    data = dataset_for(net, dataset, data_path)
    images, labels = data.test.images, data.test.labels
    if samples is not None:
        images, labels = images[:samples], labels[:samples]
    correct = spikes = sops = 0
    for i in range(0, len(images), batch):
        result = run_golden(net, torch.from_numpy(images[i:i + batch]))
        correct += int((result.classes == torch.from_numpy(labels[i:i + batch])).sum())
        spikes += int(result.spikes.sum())
        sops += int(result.sops.sum())
    n = max(1, len(images))
    return EvalReport(
        model=str(path),
        dataset=data.name,
        samples=len(images),
        accuracy_int=round(100.0 * correct / n, 4),
        accuracy_float=_float_accuracy(path, images, labels, device),
        weight_bytes=weight_bytes(net),
        file_bytes=path.stat().st_size,
        spikes_per_sample=round(spikes / n, 3),
        sops_per_sample=round(sops / n, 3),
    )


def _float_accuracy(path: Path, images, labels, device: torch.device | str = "cpu") -> float | None:
    """The accuracy of the float model in ``path``'s ``.pt`` when that checkpoint was saved with this very file
    (its fingerprint matches); None otherwise. Training is imported only then."""
    pt = path.with_suffix(".pt")
    if not pt.is_file():
        return None
    from .train import fingerprint, float_accuracy, load_float_checkpoint

    float_model = load_float_checkpoint(pt, fingerprint(path.read_bytes()))
    return None if float_model is None else round(float_accuracy(float_model.to(device), images, labels), 4)
