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
