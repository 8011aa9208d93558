"""Issue 14: Fashion-MNIST from the Debian package's IDX .gz files (`scripts/setup.sh test` installs it).

The real data is read once; training runs on a few hundred images for one short epoch, so this stays fast.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qpsnn.sw.cli import main
from qpsnn.sw.datasets import FASHION_DEFAULT, FASHION_PACKAGE, Dataset, Split, image_shape, load_dataset
from qpsnn.sw.errors import DatasetError
from qpsnn.sw.progress import Reporter
from qpsnn.sw.train import TrainConfig, Trainer, float_accuracy

installed = pytest.mark.skipif(not (Path(FASHION_DEFAULT) / "t10k-labels-idx1-ubyte.gz").is_file(),
                               reason=f"Fashion-MNIST not installed (apt-get install -y {FASHION_PACKAGE})")


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist")


@installed
def test_reads_the_installed_files_by_default(fashion):
    assert fashion.name == "fashion-mnist" and fashion.classes == 10
    assert fashion.train.images.shape == (60000, 1, 28, 28) and fashion.test.images.shape == (10000, 1, 28, 28)
    assert fashion.train.images.dtype == np.uint8 and fashion.train.labels.dtype == np.int64
    assert np.bincount(fashion.test.labels).tolist() == [1000] * 10
    assert image_shape("fashion-mnist") == (1, 28, 28)
    same = load_dataset("fashion-mnist", FASHION_DEFAULT)  # --data-path to the same folder
    assert np.array_equal(same.test.images, fashion.test.images)


@installed
def test_a_few_hundred_images_train_and_export(fashion, tmp_path):
    small = Dataset("fashion-mnist", Split(fashion.train.images[:400], fashion.train.labels[:400]),
                    Split(fashion.test.images[:200], fashion.test.labels[:200]), 10)
    cfg = TrainConfig(dataset="fashion-mnist", spec="c4-p2-c8-p2-fc10", epochs=1, finetune_epochs=1, batch_size=100,
                      svs_samples=16, timesteps=2, lr=1e-2)
    trainer = Trainer(cfg, tmp_path / "f.qpsnn", Reporter(quiet=True), small)
    model, state = trainer.run()
    net = trainer.export(model, state, float_accuracy(model, small.test.images, small.test.labels))
    assert (tmp_path / "f.qpsnn").is_file() and net.provenance["config"]["dataset"] == "fashion-mnist"
    assert state.spec == "c2-p2-c4-p2-fc10"


def test_missing_files_name_the_package(tmp_path, capsys):
    with pytest.raises(DatasetError, match=f"Debian package {FASHION_PACKAGE}"):
        load_dataset("fashion-mnist", tmp_path)
    code = main(["train", "--dataset", "fashion-mnist", "--data-path", str(tmp_path / "none"), "--out",
                 str(tmp_path / "m.qpsnn")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"apt-get install -y {FASHION_PACKAGE}" in err
    assert not (tmp_path / "m.qpsnn").exists()
