"""The host driver: a `Device` loads a `.qpsnn` model into an accelerator and runs inference, over any
transport of `qpsnn.sw.transport` (a serial port, the simulation's socket, a memory-mapped window).

Every request carries a tag that its reply echoes; a reply with another tag is stale (its request came from
a client that went away, or from a try that timed out) and is skipped. A request waits at most ``timeout``
seconds for its reply and is sent again, with the same tag, up to ``retries`` times when the reply is
missing or damaged (or the device saw a damaged frame).

A connection opens with a resync, whatever the last client left behind: pending bytes are drained, then a
RESET is sent until it is answered. A frame the device was half-way through is cut by the device's own
time-out (the RESET's first try is swallowed by it, its retry lands), and the RESET abandons a half-sent
sample and any result, so a client that left mid-RUN or mid-WRITE never locks the device out.

Errors say what happened: no device, no answer, busy, another protocol version, a model that does not fit,
or the device's own error code.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from . import protocol as proto
from .errors import DeviceBusy, DeviceError, DeviceRefused, DeviceTimeout, ModelMismatchError, ProtocolVersionError, QpsnnError
from .geometry import PARALLEL_OFFSETS, geometry_of
from .intnet import IntNet
from .packing import pack_words
from .transport import open_transport

RETRYABLE = (proto.E_CRC, proto.E_TIMEOUT)


@dataclass
class LinkStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    frames: int = 0
    retries: int = 0
    stale_replies: int = 0  # replies with another request's tag, skipped


@dataclass
class LoadReport:
    bytes_sent: int
    bytes_received: int
    frames: int
    words: int
    seconds: float


@dataclass
class InferResult:
    classes: np.ndarray
    potentials: np.ndarray  # [N, classes]
    cycles: np.ndarray
    seconds: float = 0.0
    stats: LinkStats = field(default_factory=LinkStats)


def hw_weight_rows(layer, offsets: int = 1):
    """A layer's weight rows in the order the accelerator stores them: as the file has them (input channel,
    ky, kx), or, for a conv layer built kernel-parallel (``offsets`` = 9), offset-major (ky, kx, input
    channel), so each kernel offset's rows fill one of nine weight memories read together."""
    rows = layer.weight_rows().numpy()
    if layer.kind != "conv" or offsets == 1:
        return rows
    c_in, cols = rows.shape[0] // offsets, rows.shape[1]
    return rows.reshape(c_in, offsets, cols).transpose(1, 0, 2).reshape(-1, cols)


def model_words(net: IntNet, lanes: int, offsets: int = 1, unrolled: bool = False) -> list[tuple[int, int, list[int]]]:
    """(layer, region, words) that configure the accelerator for ``net``: packed weights, thresholds, biases
    (as two's complement in the layer's membrane width). ``unrolled``: layer 1 is built time-unrolled, one
    weight store per input channel, so its rows stay in the file's order (input channel, ky, kx)."""
    out = []
    geo = geometry_of(net, lanes, offsets, unrolled)
    for i, (layer, lg) in enumerate(zip(net.layers, geo.layers)):
        words = [int(w) for w in pack_words(hw_weight_rows(layer, 1 if lg.unrolled else offsets), layer.bits, lanes)]
        if lg.unrolled:  # each input channel's 9 G words padded to the store's power-of-two stride
            used, stride = PARALLEL_OFFSETS * lg.groups, lg.channel_stride
            words = [w for c in range(0, len(words), used) for w in words[c:c + used] + [0] * (stride - used)]
        out.append((i, proto.REGION_WEIGHTS, words))
        mask = (1 << layer.membrane_bits) - 1
        if layer.threshold is not None:
            out.append((i, proto.REGION_THRESHOLD, [int(v) & mask for v in layer.threshold.tolist()]))
        out.append((i, proto.REGION_BIAS, [int(v) & mask for v in layer.bias.tolist()]))
    return out


def write_payloads(net: IntNet, info: proto.DeviceInfo):
    """The WRITE payloads that configure the accelerator for ``net``, each filling one frame."""
    per_frame = (info.max_payload - proto.WRITE_HEADER) // info.word_bytes
    for layer, region, words in model_words(net, info.lanes, info.offsets, info.unrolled):
        for addr in range(0, len(words), per_frame):
            yield proto.write_payload(layer, region, addr, words[addr:addr + per_frame], info.word_bytes)


def run_payloads(image: np.ndarray, info: proto.DeviceInfo) -> list[bytes]:
    """The RUN payloads of one sample: its raw pixels in frame-sized chunks, each with its pixel offset."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    chunk = info.max_payload - proto.RUN_HEADER
    return [proto.run_payload(offset, pixels[offset:offset + chunk]) for offset in range(0, len(pixels), chunk)]


class Device:
    def __init__(self, url: str, timeout: float = 2.0, retries: int = 3, baudrate: int = 115200, transport=None):
        if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):  # nan fails both
            raise QpsnnError(f"timeout {timeout!r} must be a positive number of seconds")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise QpsnnError(f"retries {retries!r} must be an integer of at least 0")
        self.url, self.timeout, self.retries = url, timeout, retries
        self.transport = transport or open_transport(url, baudrate)
        self.parser = proto.ReplyParser()
        self.stats = LinkStats()
        self._info: proto.DeviceInfo | None = None
        self._tag = secrets.randbelow(256)  # a new client's tags differ from a departed one's
        self._synced = False

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def _drain(self) -> None:
        """Drop stale bytes (a departed client's replies) before a request, but not a busy notice: a server
        serving another client sends one and hangs up, possibly before this client's first request."""
        stale = proto.ReplyParser()
        stale.feed(self.transport.drain())
        while (reply := stale.take()) is not None:
            if reply.status == proto.E_BUSY:
                raise DeviceBusy(f"{self.url}: {proto.ERRORS[proto.E_BUSY]}")

    def _exchange(self, frame: bytes, tag: int, timeout: float) -> proto.Reply | None:
        """Send one frame, return its reply (or a damaged one), or None when none came in time."""
        self._drain()
        self.parser = proto.ReplyParser()
        self.transport.write(frame)
        self.stats.bytes_sent += len(frame)
        self.stats.frames += 1
        deadline = time.monotonic() + timeout
        while True:
            reply = self.parser.take()
            if reply is not None and reply.status == proto.E_BUSY:
                raise DeviceBusy(f"{self.url}: {proto.ERRORS[proto.E_BUSY]}")
            if reply is not None and reply.status is not None and reply.tag != tag:
                self.stats.stale_replies += 1
                continue
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                return None
            data = self.transport.read(deadline)
            self.stats.bytes_received += len(data)
            self.parser.feed(data)

    def resync(self) -> None:
        """Leave the device ready whatever state the last client left it in: drain, then RESET until answered."""
        self._synced = True
        self._drain()
        self.request(proto.RESET)

    def request(self, cmd: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """One command with retries; the payload of its OK reply, or `DeviceRefused` with the device's code."""
        if not self._synced:
            self.resync()
        self._tag = (self._tag + 1) % 256
        tag = self._tag
        frame = proto.request(cmd, payload, tag)
        name = proto.COMMANDS.get(cmd, f"command {cmd:#x}")
        what = "no reply"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            reply = self._exchange(frame, tag, timeout or self.timeout)
            if reply is None:
                what = "no reply"
                continue
            if reply.status is None:
                what = "a damaged reply (bad CRC)"
                continue
            if reply.status in RETRYABLE:
                what = f"error code {reply.status} ({proto.ERRORS[reply.status]})"
                continue
            if reply.status != proto.OK:
                raise DeviceRefused(name, reply.status, proto.ERRORS.get(reply.status, "unknown error code"))
            return reply.payload
        raise DeviceTimeout(f"{name}: {what} from {self.url} within {timeout or self.timeout:g} s, "
                            f"{self.retries + 1} tries; is the device there and running the qpsnn bitstream "
                            f"(host protocol v{proto.VERSION})?")

    # ------------------------------------------------------------------ commands
    def identify(self) -> proto.DeviceInfo:
        body = self.request(proto.IDENTIFY)
        try:
            info = proto.DeviceInfo.from_bytes(body)
        except ValueError as exc:
            raise DeviceError(f"{self.url} answered identify with something else: {exc}") from None
        if info.version != proto.VERSION:
            raise ProtocolVersionError(f"the device speaks host protocol version {info.version}, this driver "
                                       f"version {proto.VERSION}: rebuild the bitstream or update qpsnn")
        self._info = info
        return info

    @property
    def info(self) -> proto.DeviceInfo:
        return self._info or self.identify()

    def reset(self) -> None:
        self.request(proto.RESET)

    def check_fits(self, net: IntNet) -> None:
        info = self.info
        geo = geometry_of(net, info.lanes, info.offsets, info.unrolled)
        if proto.fingerprint(geo) == info.fingerprint:
            return
        problems = []
        if len(geo.layers) != len(info.layers):
            problems.append(f"{len(geo.layers)} layers, the accelerator has {len(info.layers)}")
        for lg, li in zip(geo.layers, info.layers):
            if lg.weight_words > li.weight_words:
                problems.append(f"layer {lg.index} needs {lg.weight_words} weight words, the memory has {li.weight_words}")
            if (lg.hw_kind, lg.bits, lg.channels) != (li.kind, li.bits, li.channels):
                problems.append(f"layer {lg.index} is {lg.hw_kind} {lg.channels}ch {lg.bits}-bit, the accelerator's "
                                f"{li.kind} {li.channels}ch {li.bits}-bit")
        if tuple(net.in_shape) != info.in_shape:
            problems.append(f"input {tuple(net.in_shape)}, the accelerator's {info.in_shape}")
        detail = "; ".join(problems) or "shifts, membrane widths or timesteps differ"
        raise ModelMismatchError(f"the model does not fit the accelerator at {self.url}: {detail} "
                                 f"(build one for this model with qpsnn build / serve-sim)")

    def load(self, net: IntNet, verify: bool = True) -> LoadReport:
        """Write the model's weights, thresholds and biases, read them back, and initialise the membranes."""
        start, before = time.monotonic(), LinkStats(**vars(self.stats))
        info = self.info
        self.check_fits(net)
        self.request(proto.BEGIN_LOAD, proto.fingerprint_bytes(info.fingerprint))
        D = info.word_bytes
        for payload in write_payloads(net, info):
            self.request(proto.WRITE, payload)
        regions = model_words(net, info.lanes, info.offsets, info.unrolled)
        if verify:
            per_read = info.max_payload // D
            for layer, region, words in regions:
                for addr in range(0, len(words), per_read):
                    n = min(per_read, len(words) - addr)
                    body = self.request(proto.READ, proto.read_payload(layer, region, addr, n))
                    got = [int.from_bytes(body[i * D:(i + 1) * D], "little") for i in range(n)]
                    if got != words[addr:addr + n]:
                        bad = next(i for i in range(n) if got[i] != words[addr + i])
                        raise DeviceError(f"read-back differs: layer {layer} region {region} word {addr + bad}: "
                                          f"wrote {words[addr + bad]:#x}, read {got[bad]:#x}")
        self.reset()
        return LoadReport(self.stats.bytes_sent - before.bytes_sent, self.stats.bytes_received - before.bytes_received,
                          self.stats.frames - before.frames, sum(len(w) for _, _, w in regions),
                          time.monotonic() - start)

    def run(self, image: np.ndarray) -> tuple[int, int, list[int]]:
        """One sample: raw pixels in chunks; the last chunk's reply is the result."""
        info = self.info
        if np.size(image) != int(np.prod(info.in_shape)):
            raise DeviceError(f"an image of {np.size(image)} pixels for an accelerator that takes {info.in_shape}")
        payloads = run_payloads(image, info)
        for attempt in range(self.retries + 1):
            try:
                for payload in payloads:
                    body = self.request(proto.RUN, payload)
                return proto.decode_result(body, info.classes)
            except DeviceRefused as exc:
                # a chunk the device took but whose reply was lost comes back as out of sequence: start over
                if exc.code != proto.E_STATE or attempt == self.retries:
                    raise
                self.stats.retries += 1
                self.reset()
        raise AssertionError("unreachable")

    def infer(self, images: np.ndarray, progress=None) -> InferResult:
        start = time.monotonic()
        classes, pots, cycles = [], [], []
        for image in images:
            c, cyc, p = self.run(image)
            classes.append(c)
            cycles.append(cyc)
            pots.append(p)
            if progress:
                progress()
        return InferResult(np.array(classes, dtype=np.int64), np.array(pots, dtype=np.int64).reshape(len(images), -1),
                           np.array(cycles, dtype=np.int64), time.monotonic() - start, self.stats)
