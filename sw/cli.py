"""The ``qpsnn`` command line. Every user error is one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from . import options as opt
from .errors import QpsnnError

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # a bug, not the user's input (sysexits' EX_SOFTWARE): one line, --debug shows the traceback


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block): ``qpsnn train: error: argument --lr: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_bits(v: int) -> None:
    if v not in (2, 4, 8):
        raise argparse.ArgumentTypeError(f"bits {v} is not one of 2, 4, 8")


def _add_data(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    from .datasets import NAMES

    p.add_argument("--dataset", default=default, metavar="D",
                   help=f"data set: {', '.join(NAMES)}" + (f" (default {default})" if default else " (default: the one the model was trained on)"))
    p.add_argument("--data-path", metavar="PATH", help="folder of the local files for mnist-idx and cifar10 (required), "
                   "fashion-mnist (default /usr/share/datasets/fashion-mnist)")


def _add_device(p: argparse.ArgumentParser, bf16: bool = True) -> None:
    p.add_argument("--device", type=opt.compute_device, default="auto",
                   help="where the float model runs: auto (CUDA when present), cpu, cuda, cuda:N, mps (default auto); "
                        "the fold, the export and the golden model are integer arithmetic on the CPU")
    if bf16:
        p.add_argument("--bf16", action="store_true", help="bfloat16 autocast while training (CUDA only)")


def _add_schedule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timesteps", type=opt.timesteps, default=4, help=f"1..{opt.MAX_TIMESTEPS} (default 4)")
    p.add_argument("--epochs", type=opt.epochs, default=40, help="QAT epochs before pruning (default 40)")
    p.add_argument("--finetune-epochs", type=opt.finetune_epochs, default=20,
                   help="quantized fine-tuning epochs after pruning (default 20)")


def _add_training(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    p.add_argument("--spec", help="architecture, e.g. c16-p2-c32-p2-fc10 (default: the data set's)")
    p.add_argument("--bits", type=int, default=4, choices=(2, 4, 8), help="hidden-layer weight bits (default 4)")
    p.add_argument("--prune", type=opt.fraction, default=0.5, help="fraction of conv channels removed (default 0.5)")
    p.add_argument("--quant", choices=("rescaw", "uniform", "float"), default="rescaw")
    p.add_argument("--criterion", choices=("svs", "l1"), default="svs")
    _add_schedule(p)
    p.add_argument("--seed", type=opt.seed, default=0)
    p.add_argument("--batch-size", type=opt.batch_size, default=64)
    p.add_argument("--lr", type=opt.learning_rate, default=5e-3,
                   help="Adam learning rate in (0, 1], cosine schedule per phase (default 5e-3)")
    p.add_argument("--svs-samples", type=opt.samples, default=64, help="training images SVS scores on (default 64)")
    p.add_argument("--svs-eps", type=opt.svs_eps, default=0.1,
                   help="singular values above eps * largest count, eps in [0, 1) (default 0.1)")
    p.add_argument("--lanes", type=opt.lanes, default=8,
                   help=f"P: weight codes per memory word in the file, a power of two up to {opt.MAX_LANES} (default 8)")
    p.add_argument("--augment", action="store_true", help="random +-2 pixel shifts while training")
    _add_device(p)


def _config(args):
    from .train import TrainConfig

    return TrainConfig(dataset=args.dataset, data_path=args.data_path, spec=args.spec, bits=args.bits, prune=args.prune,
                       quant=args.quant, criterion=args.criterion, timesteps=args.timesteps, seed=args.seed,
                       epochs=args.epochs, finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                       svs_samples=args.svs_samples, svs_eps=args.svs_eps, lanes=args.lanes, augment=args.augment)


def _train_and_export(cfg, out: Path, resume: bool, quiet: bool = False, device: str = "auto",
                      bf16: bool = False) -> dict | None:
    """Train, export and evaluate; under torchrun every rank trains and rank 0 alone exports (the others
    return None)."""
    from .runtime import Runtime

    runtime = Runtime.start(device, bf16)  # a device that is not there is refused before anything loads
    try:
        result = _train_on(runtime, cfg, out, resume, quiet)
    except BaseException:
        runtime.stop(together=False)
        raise
    runtime.stop()
    return result


def _train_on(runtime, cfg, out: Path, resume: bool, quiet: bool) -> dict | None:
    from .evaluate import evaluate
    from .progress import Reporter
    from .train import Trainer, check_config, float_accuracy

    trainer = Trainer(cfg, out, Reporter(quiet=quiet), runtime=runtime)
    payload = trainer.load_checkpoint() if resume else None  # a bad checkpoint fails before any work
    config = trainer.cfg if payload is None else trainer.config_of(payload)
    check_config(config)  # spec, sizes, data set: before training
    runtime.local_batch(config.batch_size)
    model, state = trainer.run(resume=resume, payload=payload)
    if not runtime.is_main:
        return None
    acc = float_accuracy(model, trainer.data.test.images, trainer.data.test.labels)
    if trainer.cfg.quant == "float":
        raise QpsnnError(f"float model trained (test accuracy {acc:.2f} %); a float model has no integer export")
    trainer.export(model, state, acc)
    trainer.cleanup()
    report = evaluate(out, trainer.cfg.dataset, trainer.cfg.data_path, device=runtime.device)
    return {**report.to_json(), **trainer.describe()}


def _print_summary(metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("dataset", "samples", "accuracy_int", "accuracy_float", "weight_bytes", "file_bytes",
                "spikes_per_sample", "sops_per_sample", "device", "world_size", "global_batch", "images_per_second"):
        if key in metrics:
            table.add_row(key, str(metrics.get(key)))
    Console().print(table)


def cmd_demo(args) -> int:
    from .train import TrainConfig

    cfg = TrainConfig(seed=args.seed)
    out = Path(args.out)
    metrics = _train_and_export(cfg, out, resume=False)
    _print_summary(metrics, f"qpsnn demo: digits, 4-bit, 50 % pruned, ReScaW + SVS -> {out}")
    return 0


def cmd_train(args) -> int:
    metrics = _train_and_export(_config(args), Path(args.out), args.resume, device=args.device, bf16=args.bf16)
    if metrics is None:  # a data-parallel rank other than 0: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_summary(metrics, f"trained -> {args.out}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .runtime import resolve_device

    report = evaluate(args.file, args.dataset, args.data_path, args.samples, device=resolve_device(args.device))
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print_summary(report.to_json(), f"evaluation of {args.file}")
    return 0


def cmd_inspect(args) -> int:
    from . import modelfile

    net, manifest = modelfile.load_with_manifest(args.file)  # a broken file is refused before anything is shown
    if args.weights:
        for entry, layer in zip(manifest["layers"], net.layers):
            entry["weights"] = layer.weights().tolist()
    if args.json:
        print(json.dumps(manifest))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{escape(str(args.file))}[/]: qpsnn {'.'.join(map(str, manifest['version']))}, "
                  f"input {list(net.in_shape)}, T={net.timesteps}, {net.classes} classes, {net.lanes} lanes, "
                  f"leak >>{net.leak_shift}, reset zero")
    table = Table()
    for col in ("layer", "in", "out", "bits", "shift", "kept", "threshold", "bias", "V bits", "weight bytes"):
        table.add_column(col)
    sizes = {s["name"]: s["bytes"] for s in manifest["sections"]}
    for e, layer in zip(manifest["layers"], net.layers):
        th = layer.threshold
        table.add_row(escape(e["name"]), str(list(layer.in_shape)),
                      str(list(layer.out_shape)) + (f" pool {layer.pool}" if layer.pool > 1 else ""),
                      str(layer.bits), str(layer.weight_shift), f"{len(layer.kept_channels)}",
                      "—" if th is None else f"{int(th.min())}..{int(th.max())}",
                      f"{int(layer.bias.min())}..{int(layer.bias.max())}", str(layer.membrane_bits),
                      str(sizes[e["section"]]))
    console.print(table)
    prov = net.provenance
    if prov:  # JSON with ASCII escapes: any string the file holds prints on any terminal
        console.print(escape(f"provenance: spec {json.dumps(prov.get('spec'))} (from {json.dumps(prov.get('original_spec'))}), "
                             f"config {json.dumps(prov.get('config'))}"))
    if args.weights:
        for e in manifest["layers"]:
            console.print(escape(f"{e['name']} weights: {e['weights']}"))
    return 0


def cmd_ablate(args) -> int:
    from .ablate import run_ablation
    from .runtime import Runtime
    from .train import TrainConfig, check_config

    base = TrainConfig(dataset=args.dataset, data_path=args.data_path, spec=args.spec, epochs=args.epochs,
                       finetune_epochs=args.finetune_epochs, timesteps=args.timesteps)
    check_config(base)
    runtime = Runtime.start(args.device, args.bf16)
    if runtime.distributed:
        runtime.stop()
        raise QpsnnError("ablate runs in one process (start it without torchrun; --device cuda uses a GPU)")
    if args.jobs > 1 and runtime.device.type != "cpu":
        raise QpsnnError(f"--jobs {args.jobs} trains seeds in CPU processes; on {runtime.device} use --jobs 1")
    out = Path(args.out)
    run_ablation(base, args.bits, args.prune, args.seeds, out, runtime=runtime, jobs=args.jobs)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'accuracy_vs_weight_kb.png'}")
    return 0


def cmd_infer(args) -> int:
    from .infer import infer

    report = infer(args.file, args.device, args.dataset, args.data_path, args.samples, args.timeout, args.retries,
                   args.baudrate)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"{report.samples} samples through {report.device}: accuracy {report.accuracy} %, "
              f"{report.agree_with_golden}/{report.samples} equal to the golden model, "
              f"{report.cycles_mean} cycles per image; {report.bytes_sent} bytes sent "
              f"({report.load_bytes_sent} for the model), {report.seconds} s")
    return 0 if report.agree_with_golden == report.samples else 1


def cmd_reset(args) -> int:
    from .device import Device

    with Device(args.device, timeout=args.timeout, retries=args.retries, baudrate=args.baudrate) as dev:
        dev.resync()
        info = dev.identify()
    print(f"{args.device}: reset; ready (protocol v{info.version}, {len(info.layers)} layers, P={info.lanes})")
    return 0


def _add_link(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, type=opt.device_url, help="serial port or URL: /dev/ttyUSB1, socket://127.0.0.1:PORT, "
                   "mmio+socket://127.0.0.1:PORT, mmio:///sys/bus/pci/devices/.../resource0")
    p.add_argument("--timeout", type=opt.timeout, default=2.0, help="seconds to wait for each reply, in (0, 3600] (default 2)")
    p.add_argument("--retries", type=opt.retries, default=3, help="resends of an unanswered request, 0..100 (default 3)")
    p.add_argument("--baudrate", type=opt.baud, default=115200)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qpsnn", description="Quantized and pruned SNNs, from training to an FPGA accelerator.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train the default digits model (4-bit, 50%% pruned), export, evaluate")
    p.add_argument("--out", type=opt.output_file, default="model.qpsnn", help="model file to write (default model.qpsnn)")
    p.add_argument("--seed", type=opt.seed, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train, prune, fine-tune and export a QP-SNN")
    _add_training(p)
    p.add_argument("--out", type=opt.output_file, default="model.qpsnn", help="model file to write; the checkpoint is OUT.ckpt")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.ckpt")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON only")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="integer (golden) accuracy and costs of a model file")
    p.add_argument("file")
    _add_data(p, default=None)
    p.add_argument("--samples", type=opt.samples, help="only the first N test images")
    _add_device(p, bf16=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="show a model file's manifest")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--weights", action="store_true", help="include the integer weights")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ablate", help="float / uniform+L1 / +ReScaW / +SVS / ReScaW+SVS over bits, ratios, seeds")
    _add_data(p)
    p.add_argument("--bits", type=opt.list_of(int, _check_bits), default=[2, 4])
    p.add_argument("--prune", type=opt.list_of(opt.fraction), default=[0.5, 0.75])
    p.add_argument("--seeds", type=opt.seeds, default=3)
    p.add_argument("--spec", help="architecture, e.g. c16-p2-c32-p2-fc10 (default: the data set's)")
    _add_schedule(p)
    p.add_argument("--jobs", type=opt.jobs, default=1,
                   help="seeds trained at once, one CPU process and one torch thread each (default 1)")
    p.add_argument("--out", type=opt.output_dir, default="runs/ablate")
    _add_device(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("infer", help="load a model into a device (board or serve-sim) and classify test images")
    p.add_argument("file")
    _add_link(p)
    _add_data(p, default=None)
    p.add_argument("--samples", type=opt.samples, default=20, help="first N test images (default 20)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("reset", help="resynchronise a device whatever its last client left behind, and reset it "
                                     "(every connection does this first; here on its own)")
    _add_link(p)
    p.set_defaults(func=cmd_reset)

    from qpsnn.hw.cli import register as register_hw  # these import no optional package: each command checks
    from qpsnn.sim.cli import register as register_sim  # its own extra when it runs (errors.require_extra)

    from .nir_cli import register as register_nir

    for register in (register_sim, register_hw, register_nir):
        register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # every `finally` runs, and subprocess.run kills the simulator or tool it waits on


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM ends a command the way Ctrl-C does: a `kill` of qpsnn must not leave its simulator running.
    Not under torchrun, which stops its ranks itself, nor from a thread (only the main thread has signals)."""
    if "WORLD_SIZE" in os.environ or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _terminate_as_interrupt():
            return args.func(args)
    except QpsnnError as exc:
        print(f"qpsnn: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"qpsnn: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as exc:  # a file or folder the user named (full disk, no permission): their input, not a bug
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qpsnn: error: {_one_line(where + (exc.strerror or str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if args.debug:
            raise
        print(f"qpsnn: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with qpsnn --debug "
              f"{args.command} ... for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
