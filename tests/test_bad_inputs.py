"""Issue 11: every bad input of every subcommand ends in exit code 2 and one line on stderr that names the
problem: no traceback, no hang, and nothing written or changed (the folder is compared before and after).

The CLI runs in-process (`main([...])`); the long operations (training, simulation, synthesis) must be
refused before they start, which is what keeps this table fast. Placeholders in an argv:
MODEL a valid small digits model, FIFO a named pipe, DIR a folder, EMPTY an empty file, TEXT a text file,
BAD:<name> a model whose manifest was edited with a valid CRC, BUSY a TCP port in use.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qpsnn.sw import modelfile
from qpsnn.sw.cli import EXIT_INTERNAL, EXIT_USAGE, main
from qpsnn.sw.fold import fold
from qpsnn.sw.fuzz_modelfile import manifest_of, rewrite

from conftest import random_model

HANG_SECONDS = 30


def _model_bytes() -> bytes:
    model = random_model("c4-p2-fc10", (1, 8, 8), seed=1)
    return modelfile.to_bytes(fold(model, lanes=4, provenance={"config": {"dataset": "digits", "data_path": None}}))


def _edited(data: bytes, edit) -> bytes:
    manifest = manifest_of(data)
    edit(manifest)
    return rewrite(data, manifest)


def _nest(m):
    m["provenance"]["deep"] = "__nested__40"


BAD_MODELS = {  # manifests with a valid CRC that must still be refused
    "lanes3": lambda m: m.update(lanes=3),
    "lanes1024": lambda m: m.update(lanes=1024),
    "kernel5": lambda m: m["layers"][0].update(kernel=5),
    "padding0": lambda m: m["layers"][0].update(padding=0),
    "bias_min": lambda m: m["layers"][1]["bias"].__setitem__(0, -2 ** 63),
    "bias_huge": lambda m: m["layers"][1]["bias"].__setitem__(0, 2 ** 64),
    "threshold_huge": lambda m: m["layers"][0]["threshold"].__setitem__(0, 2 ** 63),
    "config_list": lambda m: m["provenance"].update(config=[]),
    "data_path_int": lambda m: m["provenance"]["config"].update(data_path=5),
    "surrogate": lambda m: m["provenance"].update(spec="\ud800"),
    "deep": _nest,
    "threshold0": lambda m: m["layers"][0]["threshold"].__setitem__(0, 0),
    "timesteps2000": lambda m: m.update(timesteps=2000),
    "name_int": lambda m: m["layers"][0].update(name=7),
}

CASES = [
    # global
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    # demo
    (["demo", "--seed", "-1"], "--seed: -1 is outside"),
    (["demo", "--seed", str(2 ** 64)], "--seed"),
    (["demo", "--seed", "abc"], "not an integer"),
    (["demo", "--out", ""], "empty path"),
    (["demo", "--out", "DIR"], "is a directory"),
    (["demo", "--out", "TEXT/x.qpsnn"], "is not a directory"),
    # train: every option, and the checks made before training starts
    (["train", "--lanes", "3"], "--lanes: 3 is not a power of two in 1..64"),
    (["train", "--lanes", "-8"], "--lanes"),
    (["train", "--lanes", "0"], "--lanes"),
    (["train", "--lanes", "1024"], "--lanes: 1024"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "nan"], "--lr: nan"),
    (["train", "--lr", "1e30"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--spec", "c99999999999-fc10"], "at most 4096 channels"),
    (["train", "--spec", "c4096-c4096-fc10"], "weights, more than"),
    (["train", "--spec", "c8-x3-fc10"], "bad token 'x3'"),
    (["train", "--spec", "c8-p2-p2-p2-p2-fc10"], "pooling"),
    (["train", "--out", "DIR"], "is a directory"),
    (["train", "--out", "TEXT/x.qpsnn"], "is not a directory"),
    (["train", "--resume", "--out", "none.qpsnn"], "no such checkpoint"),
    (["train", "--resume", "--out", "empty.qpsnn"], "cannot be read"),
    (["train", "--resume", "--out", "foreign.qpsnn"], "not a qpsnn training checkpoint"),
    (["train", "--finetune-epochs", "-1"], "--finetune-epochs"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--timesteps", "2000"], "--timesteps: 2000"),
    (["train", "--timesteps", "0"], "--timesteps"),
    (["train", "--svs-eps", "-5"], "--svs-eps"),
    (["train", "--svs-eps", "inf"], "--svs-eps"),
    (["train", "--svs-samples", "0"], "--svs-samples"),
    (["train", "--batch-size", "1"], "--batch-size"),
    (["train", "--prune", "1"], "outside [0, 1)"),
    (["train", "--prune", "half"], "not a number"),
    (["train", "--seed", "-5"], "--seed"),
    (["train", "--bits", "3"], "invalid choice: 3"),
    (["train", "--quant", "ternary"], "invalid choice"),
    (["train", "--dataset", "imagenet"], "unknown data set 'imagenet'"),
    (["train", "--data-path", "DIR"], "--data-path is only for"),
    (["train", "--dataset", "mnist-idx"], "--data-path"),
    (["train", "--dataset", "cifar10", "--data-path", "missing"], "does not exist"),
    (["train", "--dataset", "mnist-idx", "--data-path", "IDX0"], "hold no images"),
    (["train", "--dataset", "mnist-idx", "--data-path", "IDXLABELS"], "labels 0-9"),
    (["train", "--dataset", "fashion-mnist", "--data-path", "missing"], "apt-get install -y dataset-fashion-mnist"),
    (["train", "--dataset", "fashion-mnist", "--data-path", "DIR"], "Debian package dataset-fashion-mnist"),
    (["train", "--device", "tpu"], "'tpu' is not a device"),
    (["train", "--device", "cuda:999"], "--device cuda:999"),  # no CUDA here, or not that many GPUs
    (["train", "--device", "cpu", "--bf16"], "--bf16 needs a CUDA device"),
    (["eval", "MODEL", "--device", "gpu"], "'gpu' is not a device"),
    (["eval", "MODEL", "--device", "cuda:999"], "--device cuda:999"),
    (["ablate", "--device", "cuda:999", "--seeds", "1"], "--device cuda:999"),
    # eval
    (["eval", "FIFO"], "not a regular file"),
    (["eval", "/dev/zero"], "not a regular file"),
    (["eval", "DIR"], "is a directory"),
    (["eval", "EMPTY"], "too short"),
    (["eval", "TEXT"], "bad magic"),
    (["eval", "missing.qpsnn"], "no such model file"),
    (["eval", "MODEL", "--samples", "0"], "--samples"),
    (["eval", "MODEL", "--samples", "-3"], "--samples"),
    (["eval", "MODEL", "--dataset", "cifar10"], "--data-path"),
    (["eval", "MODEL", "--data-path", "DIR"], "--data-path is only for"),
    (["eval", "BAD:lanes3"], "lanes must be a power of two"),
    (["eval", "BAD:bias_min"], "does not fit"),
    (["eval", "BAD:threshold0"], "thresholds must be positive"),
    (["eval", "BAD:data_path_int"], "data_path must be a string"),
    # inspect
    (["inspect", "FIFO"], "not a regular file"),
    (["inspect", "DIR"], "is a directory"),
    (["inspect", "EMPTY"], "too short"),
    (["inspect", "BAD:surrogate"], "not valid Unicode"),
    (["inspect", "BAD:lanes1024"], "lanes must be a power of two"),
    (["inspect", "BAD:kernel5"], "kernel"),
    (["inspect", "BAD:padding0"], "padding"),
    (["inspect", "BAD:bias_huge"], "does not fit"),
    (["inspect", "BAD:threshold_huge"], "does not fit"),
    (["inspect", "BAD:config_list"], "provenance.config must be an object"),
    (["inspect", "BAD:deep"], "nested deeper"),
    (["inspect", "BAD:timesteps2000"], "timesteps = 2000 is above 1024"),
    (["inspect", "BAD:name_int"], "name must be a string"),
    # ablate
    (["ablate", "--seeds", "0"], "--seeds"),
    (["ablate", "--bits", "2,3"], "bits 3 is not one of"),
    (["ablate", "--prune", "0.5,1.5"], "outside [0, 1)"),
    (["ablate", "--epochs", "-1"], "--epochs"),
    (["ablate", "--finetune-epochs", "-1"], "--finetune-epochs"),
    (["ablate", "--timesteps", "5000"], "--timesteps"),
    (["ablate", "--out", "TEXT"], "not a directory"),
    (["ablate", "--jobs", "0"], "--jobs"),
    (["ablate", "--spec", "c16-x2-fc10", "--seeds", "1"], "c16-x2-fc10"),
    (["ablate", "--data-path", "DIR"], "--data-path is only for"),
    # infer
    (["infer", "MODEL", "--device", "loop://", "--timeout", "nan"], "--timeout: nan"),
    (["infer", "MODEL", "--device", "loop://", "--timeout", "0"], "--timeout"),
    (["infer", "MODEL", "--device", "loop://", "--timeout", "-1"], "--timeout"),
    (["infer", "MODEL", "--device", "loop://", "--retries", "-1"], "--retries"),
    (["infer", "MODEL", "--device", "loop://", "--samples", "0"], "--samples"),
    (["infer", "MODEL", "--device", "loop://", "--baudrate", "0"], "--baudrate"),
    (["infer", "MODEL", "--device", "mmio://EMPTY", "--samples", "1"], "cannot map"),
    (["infer", "MODEL", "--device", "mmio://FIFO"], "not a register window file"),
    (["infer", "MODEL", "--device", "bogus://x"], "unknown scheme"),
    (["infer", "MODEL", "--device", "socket://localhost"], "HOST:PORT"),
    (["infer", "MODEL", "--device", "socket://127.0.0.1:70000"], "HOST:PORT"),
    (["infer", "MODEL", "--device", "missing-tty"], "No such file"),
    (["infer", "MODEL", "--device", "TEXT"], "not a serial port"),
    (["infer", "FIFO", "--device", "loop://"], "not a regular file"),
    # reset
    (["reset"], "--device"),
    (["reset", "--device", "loop://", "--timeout", "0"], "--timeout"),
    (["reset", "--device", "loop://", "--retries", "-1"], "--retries"),
    (["reset", "--device", "bogus://x"], "unknown scheme"),
    (["reset", "--device", "socket://127.0.0.1:70000"], "HOST:PORT"),
    (["reset", "--device", "missing-tty"], "No such file"),
    (["reset", "--device", "loop://", "--timeout", "0.2", "--retries", "0"], "reset: "),
    # sim
    (["sim", "MODEL", "--lanes", "3"], "--lanes: 3"),
    (["sim", "MODEL", "--lanes", "1024"], "--lanes: 1024"),
    (["sim", "MODEL", "--lanes", "0"], "--lanes"),
    (["sim", "MODEL", "--jobs", "0"], "--jobs: 0 is outside the allowed range"),
    (["sim", "MODEL", "--jobs", "two"], "--jobs: 'two' is not an integer"),
    (["sim", "MODEL", "--jobs", "2", "--waves"], "use it with --jobs 1"),
    (["sim", "MODEL", "--samples", "-3"], "--samples"),
    (["sim", "MODEL", "--samples", "0"], "--samples"),
    (["sim", "MODEL", "--offsets", "4"], "invalid choice"),
    (["sim", "FIFO"], "not a regular file"),
    # postsynth
    (["postsynth", "MODEL"], "--board"),
    (["postsynth", "MODEL", "--board", "icebreaker", "--samples", "0"], "--samples"),
    (["postsynth", "MODEL", "--board", "icebreaker", "--lanes", "3"], "--lanes: 3"),
    (["postsynth", "FIFO", "--board", "icebreaker"], "not a regular file"),
    (["postsynth", "missing.qpsnn", "--board", "icebreaker"], "no such model file"),
    (["sim", "BAD:lanes3"], "lanes must be a power of two"),
    # serve-sim
    (["serve-sim", "MODEL", "--port", "70000"], "--port"),
    (["serve-sim", "MODEL", "--port", "-1"], "--port"),
    (["serve-sim", "MODEL", "--port", "BUSY"], "cannot listen there"),
    (["serve-sim", "MODEL", "--clients", "0"], "--clients"),
    (["serve-sim", "MODEL", "--simulator", "icarus"], "invalid choice: 'icarus'"),
    (["bench-link", "MODEL", "--simulator", "icarus"], "invalid choice: 'icarus'"),
    (["serve-sim", "MODEL", "--max-payload", "0"], "--max-payload"),
    (["serve-sim", "MODEL", "--max-payload", "100"], "power of two"),
    (["serve-sim", "MODEL", "--lanes", "3"], "--lanes"),
    (["serve-sim", "FIFO"], "not a regular file"),
    (["serve-sim", "missing.qpsnn"], "no such model file"),
    # bench-link
    (["bench-link", "MODEL", "--frames", "-5"], "--frames"),
    (["bench-link", "MODEL", "--samples", "-3"], "--samples"),
    (["bench-link", "MODEL", "--seed", "-1"], "--seed"),
    (["bench-link", "FIFO"], "not a regular file"),
    # bench-density
    (["bench-density", "MODEL", "--samples", "0"], "--samples"),
    (["bench-density", "MODEL", "--lanes", "3"], "--lanes"),
    (["bench-density", "MODEL", "--out", "TEXT"], "not a directory"),
    (["bench-density", "FIFO"], "not a regular file"),
    # build
    (["sweep", "MODEL", "--board", "icebreaker", "--lanes", "1,3"], "--lanes: 3"),
    (["sweep", "MODEL", "--board", "icebreaker", "--offsets", "2"], "--offsets"),
    (["sweep", "MODEL", "--board", "icebreaker", "--clock", "nan"], "--clock: nan"),
    (["sweep", "MODEL", "--board", "icebreaker", "--samples", "0"], "--samples"),
    (["sweep", "FIFO", "--board", "icebreaker"], "not a regular file"),
    (["sweep", "MODEL", "--board", "icebreaker", "--out", "TEXT"], "--out"),
    (["sweep", "MODEL", "--board", "nope"], "--board"),
    (["build", "MODEL", "--board", "icebreaker", "--baud", "0"], "--baud"),
    (["build", "MODEL", "--board", "icebreaker", "--baud", "-115200"], "--baud"),
    (["build", "MODEL", "--board", "icebreaker", "--clock", "nan"], "--clock: nan"),
    (["build", "MODEL", "--board", "icebreaker", "--clock", "0"], "--clock"),
    (["build", "MODEL", "--board", "icebreaker", "--clock", "5000"], "--clock"),
    (["build", "MODEL", "--board", "icebreaker", "--lanes", "0"], "--lanes"),
    (["build", "MODEL", "--board", "icebreaker", "--lanes", "3"], "--lanes"),
    (["build", "MODEL", "--board", "icebreaker", "--out", "TEXT"], "not a directory"),
    (["build", "MODEL", "--board", "nonsense"], "invalid choice"),
    (["build", "FIFO", "--board", "icebreaker"], "not a regular file"),
    (["build", "BAD:kernel5", "--board", "icebreaker"], "kernel"),
    (["build"], "give a model file"),
    # flash
    (["flash", "--board", "nonsense"], "invalid choice"),
    (["flash", "--board", "icebreaker", "--bitstream", "FIFO"], "not a regular file"),
    (["flash", "--board", "icebreaker", "--bitstream", "missing.bin"], "no such bitstream"),
]


@pytest.fixture(scope="module")
def model_bytes():
    return _model_bytes()


@pytest.fixture
def workdir(tmp_path, monkeypatch, model_bytes):
    """A folder with every placeholder; the test runs inside it."""
    (tmp_path / "MODEL").write_bytes(model_bytes)
    for name, edit in BAD_MODELS.items():
        (tmp_path / f"BAD:{name}").write_bytes(_edited(model_bytes, edit))
    os.mkfifo(tmp_path / "FIFO")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "EMPTY").write_bytes(b"")
    (tmp_path / "TEXT").write_text("this is not a model file, only a line of text\n")
    (tmp_path / "empty.qpsnn.ckpt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.qpsnn.ckpt")
    for name, labels in (("IDX0", 0), ("IDXLABELS", 1)):
        _idx_folder(tmp_path / name, labels)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _idx_folder(root: Path, count: int) -> None:
    """MNIST IDX files with ``count`` images; their labels are 200 (outside 0-9)."""
    root.mkdir()
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x08\x03" + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784 * count))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + count.to_bytes(4, "big") + bytes([200]) * count)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if not p.is_fifo() else "fifo"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_hang():
    def alarm(signum, frame):
        raise TimeoutError(f"a bad input hung for {HANG_SECONDS} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a)[:60] or "(none)" for a, _ in CASES])
def test_bad_input_is_one_clean_line(capsys, workdir, no_hang, argv, fragment):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    argv = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in argv]
    before = _snapshot(workdir)
    try:
        code = _run(argv)
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err, err
    assert _snapshot(workdir) == before, "a refused command wrote or changed a file"


def test_the_table_covers_every_subcommand():
    from qpsnn.sw.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {argv[0] for argv, _ in CASES if argv}
    mine = set(sub.choices) - {"export-nir", "import-nir"}  # issue 10's own tests
    assert mine <= covered, sorted(mine - covered)
    assert len(CASES) >= 80


def test_an_unexpected_error_is_one_line_and_debug_shows_it(capsys, monkeypatch):
    import qpsnn.sw.evaluate as evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    assert main(["eval", "x.qpsnn"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "RuntimeError: a bug over two lines" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "eval", "x.qpsnn"])


def test_entry_point_refuses_in_one_line(tmp_path):
    """The real entry point (a subprocess): exit 2, one line, for an option and for a named pipe."""
    os.mkfifo(tmp_path / "pipe")
    for argv in (["train", "--lanes", "3"], ["inspect", str(tmp_path / "pipe")]):
        proc = subprocess.run([sys.executable, "-m", "qpsnn.sw.cli", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_eval_ignores_another_models_float_checkpoint(capsys, workdir):
    """A `.pt` beside the file counts only when it was saved with that very file (its sha256)."""
    import json

    from qpsnn.sw.train import TrainState, fingerprint, save_float_checkpoint

    model = random_model("c4-p2-fc10", (1, 8, 8), seed=2)
    (workdir / "m.qpsnn").write_bytes((workdir / "MODEL").read_bytes())
    state = TrainState(spec="c4-p2-fc10")
    save_float_checkpoint(model, state, workdir / "m.pt", fingerprint(b"another model"))
    assert main(["eval", "m.qpsnn", "--samples", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy_float"] is None
    save_float_checkpoint(model, state, workdir / "m.pt", fingerprint((workdir / "m.qpsnn").read_bytes()))
    assert main(["eval", "m.qpsnn", "--samples", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy_float"] is not None
