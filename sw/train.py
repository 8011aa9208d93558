"""Training of a QP-SNN: quantization-aware training, one-shot structured pruning, quantized fine-tuning,
then the integer fold and export. A checkpoint is written after every epoch so ``--resume`` continues an
interrupted run from the last finished epoch, bit for bit the same as an uninterrupted run.
"""
from __future__ import annotations

import glob
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import Dataset, load_dataset
from .errors import QpsnnError
from .fold import fold
from .intnet import IntNet
from .model import QPSNN, QuantConfig
from .progress import Reporter
from .pruning import l1_scores, prune, select_channels, svs_counts
from .runtime import Runtime
from .spec import DEFAULT_SPECS, check_size, parse_spec


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_path: str | None = None
    spec: str | None = None  # None: the data set's default
    bits: int = 4
    prune: float = 0.5
    quant: str = "rescaw"  # rescaw | uniform | float
    criterion: str = "svs"  # svs | l1
    timesteps: int = 4
    seed: int = 0
    epochs: int = 40
    finetune_epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-3
    svs_samples: int = 64
    svs_eps: float = 0.1
    lanes: int = 8
    augment: bool = False  # random +-2 pixel shifts, for the 28x28 sets

    def resolved_spec(self) -> str:
        return self.spec or DEFAULT_SPECS.get(self.dataset, DEFAULT_SPECS["digits"])


def check_config(cfg: TrainConfig) -> None:
    """Everything about a run that can be refused without training: the data set and its path, the spec and
    the size it makes, the lanes the file will hold. Raises a `QpsnnError` that names the problem."""
    from .datasets import check_source, image_shape
    from .options import MAX_TIMESTEPS
    from .packing import lanes_problem

    check_source(cfg.dataset, cfg.data_path)
    check_size(parse_spec(cfg.resolved_spec()), image_shape(cfg.dataset))
    if lanes_problem(cfg.lanes):
        raise QpsnnError(lanes_problem(cfg.lanes))
    if not 1 <= cfg.timesteps <= MAX_TIMESTEPS:
        raise QpsnnError(f"timesteps {cfg.timesteps} is outside 1..{MAX_TIMESTEPS}")


@dataclass
class TrainState:
    phase: str = "qat"  # qat -> finetune -> done
    epoch: int = 0
    spec: str = ""
    kept: dict = field(default_factory=dict)  # layer index -> original channel indices
    history: list = field(default_factory=list)


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(images).float() / 255.0


def build_model(cfg: TrainConfig, spec: str, in_shape) -> QPSNN:
    quant = QuantConfig(mode=cfg.quant, bits=cfg.bits)
    return QPSNN(parse_spec(spec), in_shape, cfg.timesteps, quant)


@torch.no_grad()
def float_accuracy(model: QPSNN, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """Test accuracy of the float model, on the device its parameters are on."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(to_float(images[i:i + batch]).to(device))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(labels[i:i + batch])).sum())
    return 100.0 * correct / max(1, len(images))


def _shift_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _optimizer(model: QPSNN, cfg: TrainConfig, epochs: int):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return opt, sched


def _loader(data: Dataset, cfg: TrainConfig, rt: Runtime) -> torch.utils.data.DataLoader:
    """Under torchrun, this rank's share of every global batch: a `DistributedSampler` shuffles with the
    run's seed and the epoch, so the N ranks together take global batches of the configured size. Workers and
    pinned memory on CUDA only (the images are in memory already; on the CPU workers only cost)."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    dataset = TensorDataset(torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels))
    sampler = DistributedSampler(dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=cfg.seed)
    return DataLoader(dataset, batch_size=rt.local_batch(cfg.batch_size), sampler=sampler,
                      num_workers=2 if rt.cuda else 0, pin_memory=rt.cuda, persistent_workers=rt.cuda)


def _one_process_batches(data: Dataset, cfg: TrainConfig, gen: torch.Generator):
    """One process: batches in the order of a permutation drawn from the run's generator, the order from
    before torchrun support, so a seed trains the same network it trained then."""
    n = len(data.train.labels)
    order = torch.randperm(n, generator=gen)
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)
    for i in range(0, n, cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        yield images[idx], labels[idx]


def _epoch(model, opt, batches, cfg: TrainConfig, gen: torch.Generator, rt: Runtime) -> tuple[float, int]:
    """One epoch; the mean loss and the number of images, over all ranks."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64)
    for x, y in batches:
        if len(y) < 2:  # the same on every rank: each holds the same number of samples
            continue
        x = to_float(x.to(rt.device, non_blocking=True))
        y = y.to(rt.device, non_blocking=True)
        if cfg.augment:  # the generator stays on the CPU (it is in the checkpoint); the shift is the same on every rank
            x = _shift_batch(x, gen)
        with rt.autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total[0] += float(loss.detach()) * len(y)
        total[1] += len(y)
    total = rt.all_sum(total)
    return float(total[0] / max(1.0, float(total[1]))), int(total[1])


class Trainer:
    """Runs the phases and owns the checkpoint at ``<out>.ckpt``."""

    def __init__(self, cfg: TrainConfig, out: str | Path, reporter: Reporter | None = None, data: Dataset | None = None,
                 runtime: Runtime | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt = self.out.with_name(self.out.name + ".ckpt")
        self.rt = runtime or Runtime()
        self.reporter = reporter or Reporter()
        if not self.rt.is_main:
            self.reporter = Reporter(quiet=True)
        self.data = data
        self.seconds, self.images = 0.0, 0  # time in training epochs and the images they took, this process
        self.loader = None  # the DistributedSampler's loader, made on the first epoch under torchrun

    @property
    def images_per_second(self) -> float | None:
        return round(self.images / self.seconds, 1) if self.seconds > 0 else None

    def describe(self) -> dict:
        """How the model was trained: device, processes, global batch and throughput (JSON and provenance)."""
        return {**self.rt.describe(), "global_batch": self.cfg.batch_size, "images_per_second": self.images_per_second}

    # ------------------------------------------------------------------ checkpoint
    def _save_ckpt(self, model, opt, sched, state: TrainState, gen: torch.Generator) -> None:
        """Rank 0 writes; the others wait for it, so a resume after a kill finds what every rank had done."""
        if self.rt.is_main:
            self._write_ckpt(model, opt, sched, state, gen)
        self.rt.barrier()

    def _write_ckpt(self, model, opt, sched, state: TrainState, gen: torch.Generator) -> None:
        payload = {"config": asdict(self.cfg), "state": asdict(state), "model": model.state_dict(),
                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "rng": gen.get_state(), "torch_rng": torch.get_rng_state()}
        _save_atomic(payload, self.ckpt)

    CKPT_KEYS = {"config": dict, "state": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                 "rng": torch.Tensor, "torch_rng": torch.Tensor}

    def load_checkpoint(self) -> dict:
        """The checkpoint to resume from, checked for its fields (so a foreign or empty file is one error)."""
        from .options import regular_file

        regular_file(self.ckpt, "checkpoint to resume (nothing to resume)")
        try:
            payload = torch.load(self.ckpt, weights_only=True, map_location="cpu")
        except Exception as exc:
            raise QpsnnError(f"checkpoint {self.ckpt} cannot be read: {' '.join(str(exc).split())[:200]}") from None
        problem = None if isinstance(payload, dict) else "not a dict"
        for key, kind in self.CKPT_KEYS.items():
            if problem is None and not isinstance(payload.get(key), kind):
                problem = f"no {key} ({kind.__name__})"
        if problem is None:
            try:
                self.config_of(payload)
                TrainState(**payload["state"])
            except TypeError as exc:
                problem = str(exc)
        if problem:
            raise QpsnnError(f"checkpoint {self.ckpt} is not a qpsnn training checkpoint: {problem}")
        return payload

    @staticmethod
    def config_of(payload: dict) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        config = payload["config"]
        if set(config) != names:
            raise TypeError(f"config fields {sorted(set(config) ^ names)} differ from this version's")
        return TrainConfig(**config)

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, payload: dict | None = None) -> tuple[QPSNN, TrainState]:
        if resume and payload is None:
            payload = self.load_checkpoint()
        if payload is not None:
            self.cfg = self.config_of(payload)
        cfg = self.cfg
        self.out.parent.mkdir(parents=True, exist_ok=True)
        data = self.data or load_dataset(cfg.dataset, cfg.data_path)
        self.data = data
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        state = TrainState(spec=cfg.resolved_spec())
        model = build_model(cfg, state.spec, data.in_shape).to(self.rt.device)
        opt, sched = _optimizer(model, cfg, cfg.epochs)
        if payload is not None:
            try:
                state = TrainState(**payload["state"])
                state.kept = {int(k): v for k, v in state.kept.items()}
                model = build_model(cfg, state.spec, data.in_shape).to(self.rt.device)
                model.load_state_dict(payload["model"])
                opt, sched = _optimizer(model, cfg, cfg.epochs if state.phase == "qat" else cfg.finetune_epochs)
                opt.load_state_dict(payload["optimizer"])
                sched.load_state_dict(payload["scheduler"])
                gen.set_state(payload["rng"])
                torch.set_rng_state(payload["torch_rng"])
            except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise QpsnnError(f"checkpoint {self.ckpt} does not fit its own configuration: "
                                 f"{' '.join(str(exc).split())[:200]}") from None
            self.reporter.log(f"resuming {state.phase} after epoch {state.epoch} from {self.ckpt}")

        if state.phase == "qat":
            model = self._phase(model, opt, sched, state, gen, cfg.epochs, "train (QAT)" if cfg.quant != "float" else "train (float)")
            model, state = self._prune(model, state)
            state.phase, state.epoch = "finetune", 0
            opt, sched = _optimizer(model, cfg, cfg.finetune_epochs)
            if cfg.prune > 0 and cfg.finetune_epochs > 0:
                self._save_ckpt(model, opt, sched, state, gen)
        if state.phase == "finetune":
            if cfg.prune > 0:
                model = self._phase(model, opt, sched, state, gen, cfg.finetune_epochs, "fine-tune")
            state.phase = "done"
        return model, state

    def prune_and_finetune(self, model: QPSNN, state: TrainState) -> tuple[QPSNN, TrainState]:
        """Prune a trained model and fine-tune it (no resume point): used by the ablation's shared QAT runs."""
        model, state = self._prune(model, state)
        state.phase, state.epoch = "finetune", 0
        gen = torch.Generator().manual_seed(self.cfg.seed + 7)
        opt, sched = _optimizer(model, self.cfg, self.cfg.finetune_epochs)
        return self._phase(model, opt, sched, state, gen, self.cfg.finetune_epochs, "fine-tune"), state

    def _batches(self, state: TrainState, gen: torch.Generator):
        """One epoch's batches: one process draws them from the run's generator; under torchrun each rank
        takes its sampler's share, shuffled distinctly per phase and epoch, the same after a resume."""
        if not self.rt.distributed:
            return _one_process_batches(self.data, self.cfg, gen)
        self.loader = self.loader or _loader(self.data, self.cfg, self.rt)
        self.loader.sampler.set_epoch(state.epoch + (0 if state.phase == "qat" else 100_003))
        return self.loader

    def _phase(self, model, opt, sched, state: TrainState, gen, epochs: int, title: str) -> QPSNN:
        trained = model
        if self.rt.distributed:  # gradients averaged over the ranks; buffers (BN statistics) follow rank 0
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(model, device_ids=[self.rt.device.index] if self.rt.cuda else None)
        with self.reporter.task(title, epochs) as advance:
            if state.epoch:
                advance(state.epoch, "resumed")
            while state.epoch < epochs:
                start = time.perf_counter()
                loss, images = _epoch(trained, opt, self._batches(state, gen), self.cfg, gen, self.rt)
                seconds = time.perf_counter() - start
                self.seconds, self.images = self.seconds + seconds, self.images + images
                sched.step()
                state.epoch += 1
                state.history.append({"phase": state.phase, "epoch": state.epoch, "loss": round(loss, 5)})
                self._save_ckpt(model, opt, sched, state, gen)
                advance(1, f"loss {loss:.4f}, {images / max(seconds, 1e-9):,.0f} img/s")
        return model

    def _prune(self, model: QPSNN, state: TrainState) -> tuple[QPSNN, TrainState]:
        cfg = self.cfg
        if cfg.prune <= 0:
            return model, state
        if cfg.criterion == "svs":
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            idx = torch.randperm(len(self.data.train.labels), generator=gen)[:cfg.svs_samples]
            mine = idx[self.rt.rank::self.rt.world_size]  # each rank scores its share of the same images
            counts = svs_counts(model, to_float(self.data.train.images[mine.numpy()]).to(self.rt.device), cfg.svs_eps)
            scores = {i: self.rt.all_sum(c) / len(idx) for i, c in counts.items()}  # summed counts / all images
        else:
            scores = l1_scores(model)
        keep = select_channels(scores, cfg.prune)
        pruned = prune(model, keep).to(self.rt.device)
        state.kept = {i: [int(c) for c in k] for i, k in keep.items()}
        state.spec = str(pruned.spec)
        self.reporter.log(f"pruned ({cfg.criterion}, {cfg.prune:.0%}): {model.spec} -> {pruned.spec}")
        return pruned, state

    # ------------------------------------------------------------------ export
    def export(self, model: QPSNN, state: TrainState, accuracy_float: float | None = None,
               extra_provenance: dict | None = None) -> IntNet:
        from . import modelfile

        cfg = self.cfg
        model = model.cpu()  # the fold is integer arithmetic on the CPU, wherever the model trained
        prov = {"qpsnn": _version(), "torch": torch.__version__, "config": asdict(cfg), "spec": state.spec,
                "original_spec": cfg.resolved_spec(), "history": state.history[-3:],
                "accuracy_float": accuracy_float, "training": self.describe(), **(extra_provenance or {})}
        net = fold(model, lanes=cfg.lanes, kept_channels=state.kept, provenance=prov)
        remove_leftovers(self.out)  # of an export killed before: nothing but the new files stays
        data = modelfile.to_bytes(net)
        modelfile.save(net, self.out, data)
        # second: killed in between, the model stands alone; an older .pt's fingerprint does not match it
        save_float_checkpoint(model, state, self.out.with_suffix(".pt"), fingerprint(data))
        return net

    def cleanup(self) -> None:
        self.ckpt.unlink(missing_ok=True)
        remove_leftovers(self.out)


def remove_leftovers(out: Path) -> None:
    """Temporary files of a write that was killed: ``.OUT.*.part`` (model), ``OUT.ckpt.part``, ``OUT.pt.part``."""
    out = Path(out)
    folder = out.parent if out.parent.is_dir() else None
    if folder is None:
        return
    pt = out.with_suffix(".pt")
    for part in [*folder.glob(f".{glob.escape(out.name)}.*.part"), out.with_name(out.name + ".ckpt.part"),
                 pt.with_name(pt.name + ".part")]:
        if part.is_file():
            part.unlink(missing_ok=True)


def fingerprint(model_bytes: bytes) -> str:
    """What ties a float checkpoint to its `.qpsnn` file: the sha256 of the file."""
    return hashlib.sha256(model_bytes).hexdigest()


def _version() -> str:
    from qpsnn import __version__

    return __version__


def save_float_checkpoint(model: QPSNN, state: TrainState, path: Path, model_fingerprint: str | None = None) -> None:
    """The float model beside the `.qpsnn` file (for ``accuracy_float``); tensors and plain data only.
    ``model_fingerprint`` is the `fingerprint` of the `.qpsnn` file it belongs to."""
    payload = {"spec": state.spec, "in_shape": list(model.in_shape), "timesteps": model.timesteps,
               "quant": asdict(model.quant), "state_dict": model.state_dict(), "model_sha256": model_fingerprint}
    _save_atomic(payload, path)


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_float_checkpoint(path: Path, model_fingerprint: str | None = None) -> QPSNN | None:
    """The float model of a checkpoint; None when there is none, or (with ``model_fingerprint``) when it is not
    the checkpoint saved with that model file (another model's, or no qpsnn checkpoint at all)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:
        if model_fingerprint is not None:
            return None
        raise QpsnnError(f"float checkpoint {path} cannot be read: {' '.join(str(exc).split())[:200]}") from None
    if model_fingerprint is not None and (not isinstance(payload, dict)
                                          or payload.get("model_sha256") != model_fingerprint):
        return None
    try:
        model = QPSNN(parse_spec(payload["spec"]), tuple(payload["in_shape"]), payload["timesteps"],
                      QuantConfig(**payload["quant"]))
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise QpsnnError(f"float checkpoint {path} cannot be read: {' '.join(str(exc).split())[:200]}") from None
    model.eval()
    return model
