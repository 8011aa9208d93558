"""The device side of the host protocol (`qpsnn.sw.protocol`): request bytes in, the accelerator driven,
reply bytes out. Five parts joined by streams, the way Glasgow's SWD gateware is built:

    rx -> FrameReceiver -> Dispatcher -> FrameTransmitter -> tx
              | buffer        |  \\-> MemoryAccess (WRITE, READ) -> the accelerator's configuration port
              +-> BufferReader +---> PixelFeeder (RUN) -> the accelerator's pixels; its result

A request's payload is buffered and its CRC checked before anything acts on it, so a corrupt, cut or
refused frame never changes the device. Every wait is bounded: a frame that stops arriving times out after
``timeout_cycles`` without a byte (reply ``E_TIMEOUT``), and running a sample always ends in a result. The
accelerator does not count the cycles it waits for input, so the cycles reported over the link equal the
cycle model's.
"""
from __future__ import annotations

from amaranth import Array, Const, Module, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .accelerator import Accelerator
from .buffer_reader import BufferReader
from .dispatcher import Dispatcher
from .frame_receiver import FrameReceiver
from .frame_transmitter import FrameTransmitter
from .geometry import Capacities
from .memory_access import MemoryAccess
from .pixel_feeder import PixelFeeder
from .records import Body, Route


def device_info(accel: Accelerator, capacities: Capacities, max_payload: int) -> proto.DeviceInfo:
    geo = accel.geo
    layers = tuple(proto.LayerInfo(lg.hw_kind, lg.bits, lg.channels, wcap, ncap)
                   for lg, wcap, ncap in zip(geo.layers, capacities.weight_words, capacities.neuron_words))
    return proto.DeviceInfo(proto.VERSION, geo.lanes, geo.timesteps, geo.classes, geo.membrane_bits,
                            proto.word_bytes(accel.data_bits), max_payload, proto.fingerprint(geo),
                            tuple(geo.in_shape), layers, geo.offsets)


class IdentifyROM(wiring.Component):
    """IDENTIFY's reply body: the device's record, from its first byte after each ``restart``."""

    def __init__(self, record: bytes):
        self.record = record
        super().__init__({"restart": In(1), "body": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        index = Signal(range(len(self.record) + 1))
        m.d.comb += [self.body.valid.eq(1), self.body.payload.eq(Array(Const(b, 8) for b in self.record)[index])]
        with m.If(self.restart):
            m.d.sync += index.eq(0)
        with m.Elif(self.body.ready):
            m.d.sync += index.eq(index + 1)
        return m


class CommandProcessor(wiring.Component):
    """``rx``: request bytes in; ``tx``: reply bytes out. Owns the accelerator it serves."""

    def __init__(self, accel: Accelerator, capacities: Capacities | None = None, max_payload: int = 1024,
                 timeout_cycles: int = 100_000):
        if max_payload < 64 or max_payload & (max_payload - 1) or max_payload > 32768:
            raise ValueError(f"max_payload must be a power of two in 64..32768, not {max_payload}")
        self.accel = accel
        self.capacities = capacities or Capacities.exactly(accel.geo)
        self.max_payload, self.timeout_cycles = max_payload, timeout_cycles
        self.info = device_info(accel, self.capacities, max_payload)
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        acc, geo, info = self.accel, self.accel.geo, self.info
        C, H, W = geo.in_shape
        record = info.to_bytes()
        sizes = [[wcap, lg.channels, lg.channels] for lg, wcap in zip(geo.layers, self.capacities.weight_words)]

        accel_reset = Signal()
        m.submodules.accel = ResetInserter(accel_reset)(acc)
        m.submodules.buffer = buffer = Memory(shape=8, depth=self.max_payload, init=[])
        m.submodules.receiver = receiver = FrameReceiver(self.max_payload, self.timeout_cycles)
        m.submodules.reader = reader = BufferReader(self.max_payload)
        m.submodules.dispatcher = dispatcher = Dispatcher(
            len(geo.layers), C * H * W, info.word_bytes, self.max_payload, len(record),
            proto.RESULT_FIXED + proto.POTENTIAL_BITS // 8 * geo.classes, info.fingerprint)
        m.submodules.access = access = MemoryAccess(sizes, info.word_bytes, acc.data_bits)
        feeder = PixelFeeder(C * H * W, geo.classes, geo.membrane_bits)
        m.submodules.feeder = ResetInserter(accel_reset)(feeder)
        m.submodules.rom = rom = IdentifyROM(record)
        m.submodules.transmitter = transmitter = FrameTransmitter()

        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, receiver.buf, buffer.write_port())
        wiring.connect(m, reader.port, buffer.read_port())
        wiring.connect(m, receiver.frame, dispatcher.frame)
        wiring.connect(m, dispatcher.access, access.request)
        wiring.connect(m, access.done, dispatcher.access_done)
        wiring.connect(m, dispatcher.chunk, feeder.chunk)
        wiring.connect(m, feeder.done, dispatcher.chunk_done)
        wiring.connect(m, feeder.pixels, acc.pixels)
        wiring.connect(m, acc.result, feeder.result)
        wiring.connect(m, dispatcher.reply, transmitter.reply)
        wiring.connect(m, transmitter.tx, wiring.flipped(self.tx))
        m.d.comb += [reader.start.eq(dispatcher.read_start), reader.length.eq(dispatcher.read_length),
                     dispatcher.position.eq(feeder.position), dispatcher.have_result.eq(feeder.have_result),
                     dispatcher.busy.eq(acc.busy), accel_reset.eq(dispatcher.accel_reset),
                     acc.init_start.eq(dispatcher.init_start), rom.restart.eq(dispatcher.body_restart),
                     feeder.restart.eq(dispatcher.body_restart), acc.rotate_potentials.eq(feeder.rotate)]
        cfg = access.cfg
        m.d.comb += [acc.cfg_en.eq(cfg.en), acc.cfg_layer.eq(cfg.layer), acc.cfg_region.eq(cfg.region),
                     acc.cfg_addr.eq(cfg.addr), acc.cfg_data.eq(cfg.data), acc.cfg_rd.eq(cfg.rd),
                     cfg.rd_data.eq(acc.cfg_rd_data)]

        # the payload's bytes to whoever the dispatcher says; a reply's body from where it says
        for route, sink in ((Route.HEADER, dispatcher.payload), (Route.WRITE, access.write_data),
                            (Route.PIXELS, feeder.data)):
            m.d.comb += [sink.payload.eq(reader.bytes.payload), sink.valid.eq(reader.bytes.valid & (dispatcher.route == route))]
            with m.If(dispatcher.route == route):
                m.d.comb += reader.bytes.ready.eq(sink.ready)
        for body, source in ((Body.IDENTIFY, rom.body), (Body.MEMORY, access.read_data), (Body.RESULT, feeder.body)):
            with m.If(dispatcher.body == body):
                m.d.comb += [transmitter.body.payload.eq(source.payload), transmitter.body.valid.eq(source.valid),
                             source.ready.eq(transmitter.body.ready)]
        return m
