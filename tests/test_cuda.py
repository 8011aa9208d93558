"""Issue 14: training on CUDA (fp32 and bf16 autocast) gives a model file whose golden model is the same
integer network as on the CPU path: the fold, export and golden model are CPU integer arithmetic."""
from __future__ import annotations

import pytest
import torch

from qpsnn.sw import modelfile
from qpsnn.sw.evaluate import evaluate
from qpsnn.sw.progress import Reporter
from qpsnn.sw.runtime import Runtime, resolve_device
from qpsnn.sw.train import TrainConfig, Trainer, float_accuracy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() "
                          "is False): the CUDA training path is tested where one is")

CFG = TrainConfig(spec="c8-p2-c16-p2-fc10", epochs=3, finetune_epochs=1, timesteps=2, svs_samples=32, lr=1e-2)


@cuda
@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_cuda_exports_a_cpu_integer_model(digits, tmp_path, bf16):
    rt = Runtime(resolve_device("cuda"), bf16)
    trainer = Trainer(CFG, tmp_path / "gpu.qpsnn", Reporter(quiet=True), digits, rt)
    model, state = trainer.run()
    assert next(model.parameters()).is_cuda
    acc = float_accuracy(model, digits.test.images, digits.test.labels)
    net = trainer.export(model, state, acc)
    assert net.provenance["training"]["device"].startswith("cuda") and net.provenance["training"]["bf16"] == bf16
    assert trainer.images_per_second > 0
    metrics = evaluate(tmp_path / "gpu.qpsnn", device="cuda")
    assert metrics.accuracy_int > 50 and abs(metrics.accuracy_float - acc) < 1e-6
    assert not modelfile.load(tmp_path / "gpu.qpsnn").layers[0].weights().is_floating_point()


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
