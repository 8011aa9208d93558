"""The paper's ablation: float / uniform+L1 / +ReScaW / +SVS / ReScaW+SVS over bit widths, pruning ratios and
seeds. One QAT run per (quantizer, bits, seed) is shared by every pruning ratio and criterion that follows it.
Accuracies are the integer (golden) model's; weight KB is the packed weight memory; SOPs are per sample.
"""
from __future__ import annotations

import copy
import csv
import multiprocessing
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from queue import Empty

import torch

from .datasets import load_dataset
from .evaluate import weight_bytes
from .fold import fold
from .golden import run_golden
from .progress import Reporter
from .runtime import Runtime
from .train import TrainConfig, Trainer, float_accuracy

METHODS = [("float", "float", None), ("uniform+L1", "uniform", "l1"), ("+ReScaW", "rescaw", "l1"),
           ("+SVS", "uniform", "svs"), ("ReScaW+SVS", "rescaw", "svs")]


def _int_metrics(model, data, lanes: int) -> tuple[float, int, float]:
    net = fold(model.cpu(), lanes=lanes)  # integer arithmetic on the CPU, wherever the model trained
    result = run_golden(net, torch.from_numpy(data.test.images))
    acc = 100.0 * float((result.classes == torch.from_numpy(data.test.labels)).float().mean())
    return acc, weight_bytes(net), float(result.sops.float().mean())


def run_ablation(base: TrainConfig, bits: list[int], ratios: list[float], seeds: int, out: Path,
                 reporter: Reporter | None = None, runtime: Runtime | None = None, jobs: int = 1) -> list[dict]:
    """Every method over ``bits`` x ``ratios`` x seeds. ``jobs`` > 1 trains the seeds in that many CPU processes
    with one torch thread each (a seed is the unit: its QAT runs feed its fine-tunes); the rows are in seed order
    whatever order the processes finish in, so the results do not depend on ``jobs``."""
    reporter = reporter or Reporter()
    total = seeds * (1 + 2 * len(bits) * (1 + 2 * len(ratios)))
    with reporter.task("ablation", total) as advance:
        if jobs == 1:
            data = load_dataset(base.dataset, base.data_path)
            rows = [r for seed in range(seeds) for r in _seed_rows(base, bits, ratios, seed, data, runtime, advance)]
        else:
            rows = _rows_in_processes(base, bits, ratios, seeds, jobs, advance)
    write_results(rows, out, base)
    return rows


def _seed_rows(base: TrainConfig, bits: list[int], ratios: list[float], seed: int, data, runtime: Runtime | None,
               advance) -> list[dict]:
    """One seed's rows: its float run, one QAT run per (quantizer, bits), and every (ratio, criterion) after it."""
    rows: list[dict] = []
    quiet = Reporter(quiet=True)
    with tempfile.TemporaryDirectory(prefix="qpsnn-ablate-") as tmp:  # the runs' checkpoints, removed after
        work = Path(tmp)
        cfg = replace(base, seed=seed, quant="float", prune=0.0)
        model, _ = Trainer(cfg, work / "float.qpsnn", quiet, data, runtime).run()
        acc = float_accuracy(model, data.test.images, data.test.labels)
        rows.append({"method": "float", "bits": 32, "prune": 0.0, "seed": seed, "accuracy": acc,
                     "weight_bytes": 4 * sum(l.weight.numel() for l in model.layers), "sops": None})
        advance(1, f"float seed {seed}: {acc:.2f}%")
        for quant in ("uniform", "rescaw"):
            for b in bits:
                qcfg = replace(base, seed=seed, quant=quant, bits=b, prune=0.0)
                qat_model, state = Trainer(qcfg, work / "qat.qpsnn", quiet, data, runtime).run()
                advance(1, f"QAT {quant} {b}-bit seed {seed}")
                for ratio in ratios:
                    for criterion in ("l1", "svs"):
                        method = next(m for m, q, c in METHODS if q == quant and c == criterion)
                        pcfg = replace(qcfg, prune=ratio, criterion=criterion)
                        trainer = Trainer(pcfg, work / "ft.qpsnn", quiet, data, runtime)
                        pruned, _ = trainer.prune_and_finetune(copy.deepcopy(qat_model), copy.deepcopy(state))
                        acc, wbytes, sops = _int_metrics(pruned, data, base.lanes)
                        rows.append({"method": method, "bits": b, "prune": ratio, "seed": seed, "accuracy": acc,
                                     "weight_bytes": wbytes, "sops": sops})
                        advance(1, f"{method} {b}-bit prune {ratio} seed {seed}: {acc:.2f}%")
    return rows


def _rows_in_processes(base: TrainConfig, bits: list[int], ratios: list[float], seeds: int, jobs: int,
                       advance) -> list[dict]:
    """The seeds in ``jobs`` spawned processes; their progress comes back through a queue as it happens. A
    worker's error, Ctrl-C or SIGTERM ends the others at once (a pool that only stops taking work would let a
    seed train on for an hour)."""
    ctx = multiprocessing.get_context("spawn")  # no forked torch state (threads, CUDA) in the workers
    with ctx.Manager() as manager:
        queue = manager.Queue()
        pool = ctx.Pool(jobs)
        try:
            runs = [pool.apply_async(_seed_worker, (base, bits, ratios, seed, queue)) for seed in range(seeds)]
            pending = runs
            while pending:
                pending[0].wait(1.0)
                _drain(queue, advance)
                for r in pending:
                    if r.ready() and not r.successful():
                        r.get()  # the worker's exception, here, with its own message
                pending = [r for r in pending if not r.ready()]
            _drain(queue, advance)
            return [row for r in runs for row in r.get()]
        finally:
            pool.terminate()
            pool.join()


def _drain(queue, advance) -> None:
    while True:
        try:
            n, info = queue.get_nowait()
        except Empty:
            return
        advance(n, info)


def _seed_worker(base: TrainConfig, bits: list[int], ratios: list[float], seed: int, queue) -> list[dict]:
    torch.set_num_threads(1)  # one core a process: torch's own threads would oversubscribe the others
    data = load_dataset(base.dataset, base.data_path)
    return _seed_rows(base, bits, ratios, seed, data, Runtime(), lambda n=1, info="": queue.put((n, info)))


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["bits"], r["prune"]), []).append(r)
    order = {m: i for i, (m, _, _) in enumerate(METHODS)}
    out = []
    for (method, b, ratio), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] if kv[0][0] != "float" else -1, kv[0][2], order[kv[0][0]])):
        accs = [r["accuracy"] for r in rs]
        sops = [r["sops"] for r in rs if r["sops"] is not None]
        out.append({"method": method, "bits": b, "prune": ratio, "seeds": len(rs),
                    "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "weight_kb": statistics.mean(r["weight_bytes"] for r in rs) / 1024,
                    "sops": statistics.mean(sops) if sops else None})
    return out


def write_results(rows: list[dict], out: Path, base: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    lines = [f"Ablation on {base.dataset} ({base.resolved_spec()}, T={base.timesteps}, {base.epochs}+{base.finetune_epochs} epochs); "
             "integer (golden) test accuracy, mean ± std over seeds.", "",
             "| method | bits | prune | accuracy % | weight KB | SOPs / sample |", "|---|---|---|---|---|---|"]
    for s in summary:
        sops = "—" if s["sops"] is None else f"{s['sops']:,.0f}"
        lines.append(f"| {s['method']} | {s['bits']} | {s['prune']:.2f} | {s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} "
                     f"| {s['weight_kb']:.2f} | {sops} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(summary, out / "accuracy_vs_weight_kb.png", base)


def _plot(summary: list[dict], path: Path, base: TrainConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"float": "*", "uniform+L1": "o", "+ReScaW": "s", "+SVS": "^", "ReScaW+SVS": "D"}
    for method, _, _ in METHODS:
        pts = [s for s in summary if s["method"] == method]
        if not pts:
            continue
        ax.errorbar([p["weight_kb"] for p in pts], [p["accuracy_mean"] for p in pts], yerr=[p["accuracy_std"] for p in pts],
                    fmt=markers[method], label=method, capsize=3, alpha=0.85)
        for p in pts:
            if method != "float":
                ax.annotate(f"{p['bits']}b/{p['prune']:.2f}", (p["weight_kb"], p["accuracy_mean"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("weight memory (KB, log scale)")
    ax.set_ylabel("integer test accuracy (%)")
    ax.set_title(f"QP-SNN ablation on {base.dataset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
