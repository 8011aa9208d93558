"""`qpsnn infer`: load a model into a device (board or simulation) and classify test images through it,
comparing every class and potential with the golden model."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import modelfile
from .device import Device
from .evaluate import dataset_for
from .golden import run_golden
from .progress import Reporter
from .reports import Report

UART_BAUDS = (115_200, 3_000_000)


@dataclass
class InferReport(Report):
    """``qpsnn infer``: what the device answered against the golden model, and the bytes the link carried
    (the ``*_at_baud`` dicts are keyed by the baud rate as a string)."""
    model: str
    device: str
    samples: int
    accuracy: float | None
    agree_with_golden: int
    cycles_mean: float | None
    bytes_sent: int
    bytes_received: int
    retries: int
    load_bytes_sent: int
    load_bytes_received: int
    load_frames: int
    link_bytes_per_sample: float
    load_seconds_at_baud: dict
    link_images_per_second_at_baud: dict
    seconds: float


def infer(path: str | Path, url: str, dataset: str | None = None, data_path: str | None = None,
          samples: int | None = 20, timeout: float = 2.0, retries: int = 3, baudrate: int = 115200,
          reporter: Reporter | None = None) -> InferReport:
    reporter = reporter or Reporter()
    net = modelfile.load(path)
    data = dataset_for(net, dataset, data_path)
    images, labels = data.test.images, data.test.labels
    if samples is not None:
        images, labels = images[:samples], labels[:samples]
    golden = run_golden(net, torch.from_numpy(np.ascontiguousarray(images)))
    start = time.monotonic()
    with Device(url, timeout=timeout, retries=retries, baudrate=baudrate) as dev:
        info = dev.identify()
        reporter.log(f"device at {url}: {len(info.layers)} layers, P={info.lanes}, protocol v{info.version}")
        load = dev.load(net)
        reporter.log(f"model loaded and verified: {load.bytes_sent} bytes sent, {load.bytes_received} received, "
                     f"{load.frames} frames, {load.seconds:.2f} s")
        with reporter.task("inference", len(images)) as advance:
            result = dev.infer(images, progress=advance)
        sent, received, retried = dev.stats.bytes_sent, dev.stats.bytes_received, dev.stats.retries
    want_cls, want_pot = golden.classes.numpy(), golden.potentials.numpy()
    agree = int(sum(int(result.classes[i] == want_cls[i] and np.array_equal(result.potentials[i], want_pot[i]))
                    for i in range(len(images))))
    link_bytes = (sent - load.bytes_sent + received - load.bytes_received) / max(1, len(images))
    return InferReport(
        model=str(path), device=url, samples=len(images),
        accuracy=round(float((result.classes == np.asarray(labels)).mean()) * 100, 3) if len(images) else None,
        agree_with_golden=agree, cycles_mean=round(float(result.cycles.mean()), 1) if len(images) else None,
        bytes_sent=sent, bytes_received=received, retries=retried,
        load_bytes_sent=load.bytes_sent, load_bytes_received=load.bytes_received, load_frames=load.frames,
        link_bytes_per_sample=round(link_bytes, 1),
        # what the measured byte counts cost on a UART (10 bits a byte, half duplex), excluding turnaround
        load_seconds_at_baud={str(b): round((load.bytes_sent + load.bytes_received) * 10 / b, 4) for b in UART_BAUDS},
        link_images_per_second_at_baud={str(b): round(b / 10 / max(1e-9, link_bytes), 1) for b in UART_BAUDS},
        seconds=round(time.monotonic() - start, 3),
    )
