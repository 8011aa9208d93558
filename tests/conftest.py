"""Shared fixtures: a tiny random integer network and one small trained digits model per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qpsnn.sw.datasets import load_dataset
from qpsnn.sw.fold import fold
from qpsnn.sw.model import QPSNN, QuantConfig
from qpsnn.sw.progress import Reporter
from qpsnn.sw.spec import parse_spec
from qpsnn.sw.train import TrainConfig, Trainer


def random_model(spec: str = "c3-p2-fc4", in_shape=(1, 6, 6), bits: int = 4, mode: str = "rescaw", seed: int = 0,
                 timesteps: int = 3) -> QPSNN:
    """A QPSNN with random weights and random BatchNorm statistics (so the fold sees realistic scales)."""
    torch.manual_seed(seed)
    model = QPSNN(parse_spec(spec), in_shape, timesteps, QuantConfig(mode=mode, bits=bits))
    with torch.no_grad():
        for norm in model.norms:
            if hasattr(norm, "running_mean"):
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.05, 0.5)
                norm.weight.uniform_(-1.5, 2.0)
                norm.bias.uniform_(-0.3, 0.6)
        for layer in model.layers:
            if layer.bias is not None:
                layer.bias.uniform_(-0.5, 0.5)
    return model.eval()


def pytest_configure(config):
    """Under pytest-xdist (CI runs two workers), each worker builds its simulations in its own folder: two
    workers building the same design into one cached folder at once would race."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and "QPSNN_SIM_BUILD" not in os.environ:
        os.environ["QPSNN_SIM_BUILD"] = str(Path(config.rootpath) / "sim_build" / worker)


@pytest.fixture
def tiny_net():
    return fold(random_model(), lanes=4)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits(digits, tmp_path_factory):
    """A quickly trained 4-bit, 50 %-pruned digits model, exported to a file."""
    out = tmp_path_factory.mktemp("trained") / "digits.qpsnn"
    cfg = TrainConfig(spec="c16-p2-c16-p2-fc10", epochs=15, finetune_epochs=6, lr=1e-2)
    trainer = Trainer(cfg, out, Reporter(quiet=True), digits)
    model, state = trainer.run()
    net = trainer.export(model, state)
    return model, net, out
