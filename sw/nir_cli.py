"""``qpsnn export-nir`` and ``qpsnn import-nir`` (registered by `cli.build_parser`; NIR itself is imported when a
command runs, so the rest of the command line works without the ``nir`` extra)."""
from __future__ import annotations

import json

from . import options as opt
from .errors import require_extra


def cmd_export_nir(args) -> int:
    require_extra("export-nir", "nir", "nir")
    from .nir_io import export_nir

    report = export_nir(args.file, args.out, use_float=args.float, portable=args.portable)
    if args.json:
        print(json.dumps(report))
        return 0
    kind = "float checkpoint" if report["source"] == "float" else "integer network"
    print(f"wrote {report['nir']}: the {kind} of {report['model']} as {report['nodes']} NIR nodes "
          f"(T = {report['timesteps']}, dt = {report['dt']:g} s{', portable' if report['portable'] else ''})")
    for note in report["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_import_nir(args) -> int:
    require_extra("import-nir", "nir", "nir")
    from .nir_io import import_nir
    from .progress import Reporter
    from .train import TrainConfig

    cfg = TrainConfig(dataset=args.dataset, data_path=args.data_path, bits=args.bits, prune=args.prune,
                      quant=args.quant, criterion=args.criterion, timesteps=args.timesteps, seed=args.seed,
                      epochs=args.epochs, finetune_epochs=args.finetune_epochs, batch_size=args.batch_size,
                      lr=args.lr, lanes=args.lanes)
    metrics = import_nir(args.graph, cfg, args.out, dt=args.dt, reporter=Reporter(quiet=args.json))
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"wrote {args.out}: {metrics['imported_spec']} -> {metrics['spec']}, {args.bits}-bit {args.quant}; "
          f"the graph in qpsnn's float model {metrics['accuracy_graph_float']} %, after fine-tuning "
          f"float {metrics['accuracy_float']} %, integer {metrics['accuracy_int']} % on {metrics['samples']} "
          f"test images; {metrics['weight_bytes']} weight bytes")
    for note in metrics["notes"]:
        print(f"  note: {note}")
    return 0


def register(sub) -> None:
    from .cli import _add_data

    p = sub.add_parser("export-nir", help="write a model as a NIR graph (integer values, or --float)")
    p.add_argument("file", help="the .qpsnn model")
    p.add_argument("out", type=opt.output_file, help="the NIR file to write (HDF5)")
    p.add_argument("--float", action="store_true", help="the float checkpoint beside the model (MODEL.pt) instead")
    p.add_argument("--portable", action="store_true",
                   help="only nodes snnTorch 1.0 and Norse 1.1 import: OR-pooling's Threshold as a LIF with tau = dt, "
                        "LIF r = 1, no output integrator (the readout sums the output over T)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_nir)

    p = sub.add_parser("import-nir", help="a NIR graph (snnTorch, Norse, Sinabs...) -> QAT fine-tune -> .qpsnn")
    p.add_argument("graph", help="the NIR file to read")
    _add_data(p)
    p.add_argument("--bits", type=int, default=4, choices=(2, 4, 8), help="hidden-layer weight bits (default 4)")
    p.add_argument("--prune", type=opt.fraction, default=0.0, help="fraction of conv channels removed (default 0)")
    p.add_argument("--quant", choices=("rescaw", "uniform"), default="rescaw")
    p.add_argument("--criterion", choices=("svs", "l1"), default="svs")
    p.add_argument("--timesteps", type=opt.timesteps, help="T (default: the graph's metadata, else 4)")
    p.add_argument("--dt", type=opt.real(0.0, 1.0, lo_open=True, what="seconds"),
                   help="seconds per timestep the graph's time constants assume "
                        "(default: the graph's metadata, else 1e-4, snnTorch's)")
    p.add_argument("--epochs", type=opt.finetune_epochs, default=10,
                   help="QAT fine-tune epochs before pruning (default 10)")
    p.add_argument("--finetune-epochs", type=opt.finetune_epochs, default=10,
                   help="fine-tune epochs after pruning (default 10)")
    p.add_argument("--batch-size", type=opt.batch_size, default=64)
    p.add_argument("--lr", type=opt.learning_rate, default=1e-3, help="Adam learning rate, cosine schedule (default 1e-3)")
    p.add_argument("--seed", type=opt.seed, default=0)
    p.add_argument("--lanes", type=opt.lanes, default=8, help="P: weight codes per memory word in the file (default 8)")
    p.add_argument("--out", type=opt.output_file, default="model.qpsnn", help="model file to write (default model.qpsnn)")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON only")
    p.set_defaults(func=cmd_import_nir)
