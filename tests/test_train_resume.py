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


def test_an_export_killed_at_any_step_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Issue 11: die at every step of an export in turn (fold, encode, write, fsync, rename of the model, then
    of the float checkpoint); nothing but complete files may remain, and the next export ends with exactly
    the model and its checkpoint. Files a real kill leaves (no cleanup runs) are removed by the next export."""
    import os

    from qpsnn.sw import modelfile
    from qpsnn.sw.train import TrainState

    from conftest import random_model

    model = random_model("c3-p2-fc4", (1, 6, 6))
    cfg = TrainConfig(spec="c3-p2-fc4", lanes=4)
    out = tmp_path / "m.qpsnn"
    steps = [(train_mod, "fold"), (modelfile, "to_bytes"), (modelfile, "_write_all"), (os, "fsync"),
             (os, "replace"), (torch, "save")]
    calls = {"n": 0, "die_at": 0}

    def dying(real):
        def step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["die_at"]:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return step

    for owner, name in steps:
        monkeypatch.setattr(owner, name, dying(getattr(owner, name)))
    died = 0
    while True:
        calls["n"], calls["die_at"] = 0, died + 1
        trainer = Trainer(cfg, out, Reporter(quiet=True))
        try:
            trainer.export(model, TrainState(phase="done", spec="c3-p2-fc4"))
        except KeyboardInterrupt:
            died += 1
            left = {p.name for p in tmp_path.iterdir()}
            assert left <= {"m.qpsnn", "m.pt"}, (died, left)
            continue
        break
    assert died >= len(steps)  # every step was hit at least once
    monkeypatch.undo()
    for name in (".m.qpsnn.x1y2.part", "m.qpsnn.ckpt.part", "m.pt.part"):  # what SIGKILL would leave
        (tmp_path / name).write_bytes(b"partial")
    trainer = Trainer(cfg, out, Reporter(quiet=True))
    trainer.export(model, TrainState(phase="done", spec="c3-p2-fc4"))
    trainer.cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.qpsnn"]
    modelfile.load(out)
