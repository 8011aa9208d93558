import pytest
import torch

import qpsnn.sw.train as train_mod
from qpsnn.sw.errors import QpsnnError
from qpsnn.sw.progress import Reporter
from qpsnn.sw.train import TrainConfig, Trainer

CFG = TrainConfig(spec="c4-p2-c6-p2-fc10", epochs=3, finetune_epochs=2, batch_size=128, svs_samples=16)


def _run(digits, out, resume=False):
    trainer = Trainer(CFG, out, Reporter(quiet=True), digits)
    return trainer, *trainer.run(resume=resume)


@pytest.mark.parametrize("die_at", [2, 4])  # during QAT, and during fine-tuning after pruning
def test_interrupted_training_resumes_to_the_same_model(digits, tmp_path, monkeypatch, die_at):
    _, reference, ref_state = _run(digits, tmp_path / "ref.qpsnn")

    real_epoch = train_mod._epoch
    calls = {"n": 0}

    def dying_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(digits, tmp_path / "m.qpsnn")
    assert (tmp_path / "m.qpsnn.ckpt").is_file() and not (tmp_path / "m.qpsnn").exists()
    monkeypatch.setattr(train_mod, "_epoch", real_epoch)
    trainer, resumed, state = _run(digits, tmp_path / "m.qpsnn", resume=True)
    assert state.spec == ref_state.spec and state.kept == ref_state.kept
    ref_sd, got_sd = reference.state_dict(), resumed.state_dict()
    assert ref_sd.keys() == got_sd.keys()
    for key in ref_sd:
        assert torch.equal(ref_sd[key], got_sd[key]), key


def test_resume_without_checkpoint_is_a_clear_error(digits, tmp_path):
    with pytest.raises(QpsnnError, match="nothing to resume"):
        _run(digits, tmp_path / "none.qpsnn", resume=True)
