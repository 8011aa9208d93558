"""Issue 14: ``qpsnn ablate --jobs N`` trains the seeds in N processes. Its rows must be the rows of one process
(same seeds, same order, same integer accuracies), and its progress must count every run as it finishes."""
import torch

from qpsnn.sw.ablate import METHODS, run_ablation
from qpsnn.sw.progress import Reporter
from qpsnn.sw.train import TrainConfig

BASE = TrainConfig(dataset="digits", spec="c4-p2-c8-p2-fc10", epochs=1, finetune_epochs=1, timesteps=2)


def test_jobs_give_the_rows_of_one_process(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker process uses: the same float arithmetic
    try:
        one = run_ablation(BASE, [4], [0.5], 2, tmp_path / "one", reporter=Reporter(quiet=True))
    finally:
        torch.set_num_threads(threads)
    two = run_ablation(BASE, [4], [0.5], 2, tmp_path / "two", reporter=Reporter(), jobs=2)
    assert [r["seed"] for r in one] == [0] * 5 + [1] * 5
    assert {r["method"] for r in one} == {m for m, _, _ in METHODS}
    assert two == one
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ablation: ")]
    assert len(progress) == 14 and progress[-1].startswith("ablation: 14/14")
    assert (tmp_path / "two" / "results.md").read_text() == (tmp_path / "one" / "results.md").read_text()


def test_sigterm_ends_the_worker_processes_too(tmp_path):
    """`kill` of an ablation with --jobs must not leave seeds training in the background."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "qpsnn.sw.cli", "ablate", "--dataset", "digits", "--jobs", "2",
                             "--seeds", "2", "--epochs", "200", "--spec", "c4-p2-c8-p2-fc10", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(12)  # the workers are spawned and training
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("ablate --jobs 2 was stopped with SIGTERM but left processes running")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (tmp_path / "results.csv").exists()  # nothing half-written
