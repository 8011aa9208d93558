"""Issue 14: data-parallel training with torchrun (Gloo, 2 CPU processes) on digits.

One uninterrupted 2-process run is shared: it must classify within 2 points of one process with the same seed
and global batch, and a 2-process run killed after its first epoch must, resumed with ``--resume``, end with
the very same model. Small net, T=2, few epochs, one thread a process: about a minute on 2 busy cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from qpsnn.sw import modelfile

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no torch.distributed with Gloo")

TRAIN = ["train", "--spec", "c16-p2-c32-p2-fc10", "--timesteps", "2", "--epochs", "8", "--finetune-epochs", "3",
         "--svs-samples", "32", "--batch-size", "64", "--seed", "0", "--device", "cpu", "--json"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "qpsnn",
            *TRAIN, *args]


def _metrics(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone reports
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp.qpsnn"
    proc = subprocess.run(_torchrun("--out", str(out)), capture_output=True, text=True, env=ENV, timeout=300)
    return out, _metrics(proc)


def _weights(path) -> list:
    net = modelfile.load(path)
    return [(layer.weights().tolist(), layer.bias.tolist()) for layer in net.layers]


def test_two_processes_match_one_within_two_points(ddp_run, tmp_path):
    out, ddp = ddp_run
    single = _metrics(subprocess.run([sys.executable, "-m", "qpsnn", *TRAIN, "--out", str(tmp_path / "one.qpsnn")],
                                     capture_output=True, text=True, env=ENV, timeout=300))
    assert (ddp["world_size"], ddp["global_batch"], ddp["device"]) == (2, 64, "cpu")
    assert (single["world_size"], single["global_batch"]) == (1, 64)
    assert ddp["images_per_second"] > 0 and single["images_per_second"] > 0
    assert abs(ddp["accuracy_int"] - single["accuracy_int"]) <= 2.0, (ddp["accuracy_int"], single["accuracy_int"])
    training = modelfile.load(out).provenance["training"]  # the file says how it was trained
    assert (training["device"], training["world_size"], training["global_batch"]) == ("cpu", 2, 64)
    assert not out.with_name(out.name + ".ckpt").exists()


def test_a_killed_run_resumes_to_the_same_model(ddp_run, tmp_path):
    reference, _ = ddp_run
    out = tmp_path / "killed.qpsnn"
    ckpt = out.with_name(out.name + ".ckpt")
    proc = subprocess.Popen(_torchrun("--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:  # as a scheduler preempts a job: torchrun passes SIGTERM to the ranks (each in its own session)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert ckpt.is_file() and not out.exists(), "the run ended before it could be killed"
    state = torch.load(ckpt, weights_only=True)["state"]
    assert state["phase"] == "qat" and state["epoch"] < 8
    resumed = subprocess.run(_torchrun("--out", str(out), "--resume"), capture_output=True, text=True, env=ENV,
                             timeout=300)
    metrics = _metrics(resumed)
    assert "resuming qat after epoch" in resumed.stderr
    assert metrics["world_size"] == 2 and not ckpt.exists()
    assert _weights(out) == _weights(reference)  # the same integer model as the uninterrupted run


def test_a_rank_0_error_after_training_is_the_one_line_the_run_ends_with(tmp_path):
    """The other ranks wait for rank 0 in `Runtime.stop`; when rank 0 fails after training they leave quietly
    and its one-line error is all that is said (no Gloo 'connection closed' from the rank that waited)."""
    short = {"--epochs": "1", "--finetune-epochs": "0", "--prune": "0", "--quant": "float"}
    args = _torchrun("--out", str(tmp_path / "f.qpsnn"), *[x for kv in short.items() for x in kv])
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)  # the last --epochs wins
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qpsnn:")]
    assert len(errors) == 1 and "a float model has no integer export" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "f.qpsnn").exists()
