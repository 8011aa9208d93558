"""The command processor's decision maker: reads a checked frame's command header, refuses what it must
(every check before anything acts), hands the work to the memory access or the pixel feeder, and answers
with a reply header that echoes the request's tag.
"""
from __future__ import annotations



from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw import protocol as proto

from .memory_access import AccessDone, AccessRequest
from .pixel_feeder import ChunkDone
from .records import Body, CommandHeader, FrameHeader, ReceivedFrame, Route

HEADER_BYTES = {proto.BEGIN_LOAD: proto.BEGIN_LOAD_PAYLOAD, proto.WRITE: proto.WRITE_HEADER,
                proto.READ: proto.READ_PAYLOAD, proto.RUN: proto.RUN_HEADER}


class Dispatcher(wiring.Component):
    def __init__(self, n_layers: int, pixels: int, word_bytes: int, max_payload: int, identify_bytes: int,
                 result_bytes: int, fingerprint: int):
        self.n_layers, self.n_pixels, self.word_bytes, self.max_payload = n_layers, pixels, word_bytes, max_payload
        self.identify_bytes, self.result_bytes, self.fingerprint = identify_bytes, result_bytes, fingerprint
        super().__init__({
            "frame": In(stream.Signature(ReceivedFrame)), "payload": In(stream.Signature(8)),
            "read_start": Out(1), "read_length": Out(16), "route": Out(Route),
            "access": Out(stream.Signature(AccessRequest)), "access_done": In(stream.Signature(AccessDone)),
            "chunk": Out(stream.Signature(16)), "chunk_done": In(stream.Signature(ChunkDone)),
            "position": In(range(pixels + 1)), "have_result": In(1),
            "reply": Out(stream.Signature(FrameHeader)), "body": Out(Body), "body_restart": Out(1),
            "accel_reset": Out(1), "init_start": Out(1), "busy": In(1)})

    def elaborate(self, platform):
        m = Module()
        frame = self.frame.payload.header
        length, code = frame.length, frame.code
        hdr = Signal(CommandHeader)
        hdr_bytes = data.View(data.ArrayLayout(8, CommandHeader.size // 8), hdr)
        taken, wanted = Signal(4), Signal(4)
        sample_open = self.position != 0
        m.d.comb += [self.read_length.eq(length), self.reply.payload.tag.eq(frame.tag)]
        w, r, run = hdr.write, hdr.read, hdr.run
        m.d.comb += [self.access.payload.read.eq(code == proto.READ), self.access.payload.layer.eq(w.layer),
                     self.access.payload.region.eq(w.region), self.access.payload.addr.eq(w.addr),
                     self.access.payload.count.eq(r.count), self.access.payload.payload_bytes.eq(length - proto.WRITE_HEADER),
                     self.chunk.payload.eq(length - proto.RUN_HEADER)]

        def answer(status, n_bytes=0, body=Body.NONE):
            m.d.sync += [self.reply.payload.code.eq(status), self.reply.payload.length.eq(n_bytes), self.body.eq(body)]
            m.d.comb += self.body_restart.eq(1)
            m.next = "REPLY"

        with m.FSM(name="dispatch"):
            with m.State("IDLE"):
                with m.If(self.frame.valid):
                    with m.If(self.frame.payload.status != proto.OK):
                        answer(self.frame.payload.status)
                    with m.Else():
                        with m.Switch(code):
                            for command, n in HEADER_BYTES.items():
                                with m.Case(command):
                                    m.d.sync += wanted.eq(Mux(length < n, length, n))
                            with m.Default():
                                m.d.sync += wanted.eq(0)
                        m.d.comb += self.read_start.eq(1)
                        m.d.sync += [taken.eq(0), hdr.eq(0)]
                        m.next = "HEADER"
            with m.State("HEADER"):  # the command header's bytes out of the buffer
                m.d.comb += self.payload.ready.eq(taken != wanted)
                with m.If(taken == wanted):
                    m.next = "CHECK"
                with m.Elif(self.payload.valid):
                    m.d.sync += [hdr_bytes[taken].eq(self.payload.payload), taken.eq(taken + 1)]
            with m.State("CHECK"):
                refuse_memory = (w.layer >= self.n_layers) | (w.region > max(proto.Region))
                busy = self.busy | sample_open
                with m.Switch(code):
                    with m.Case(proto.IDENTIFY):
                        answer(Mux(length != 0, proto.E_LENGTH, proto.OK), Mux(length != 0, 0, self.identify_bytes),
                               Body.IDENTIFY)
                    with m.Case(proto.RESET):
                        with m.If(length != 0):
                            answer(proto.E_LENGTH)
                        with m.Else():
                            m.next = "RESET"
                    with m.Case(proto.BEGIN_LOAD):
                        answer(Mux(length != proto.BEGIN_LOAD_PAYLOAD, proto.E_LENGTH,
                                   Mux(hdr.begin_load.fingerprint != self.fingerprint, proto.E_MODEL, proto.OK)))
                    with m.Case(proto.WRITE, proto.READ):
                        with m.If((code == proto.WRITE) & (length <= proto.WRITE_HEADER)
                                  | (code == proto.READ) & (length != proto.READ_PAYLOAD)):
                            answer(proto.E_LENGTH)
                        with m.Elif(refuse_memory):
                            answer(proto.E_RANGE)
                        with m.Elif((code == proto.READ) & ((r.count == 0) | (r.count * self.word_bytes > self.max_payload))):
                            answer(proto.E_LENGTH)
                        with m.Elif(busy):
                            answer(proto.E_STATE)
                        with m.Else():
                            m.next = "ACCESS"
                    with m.Case(proto.RUN):
                        with m.If((length <= proto.RUN_HEADER) | (run.offset + length - proto.RUN_HEADER > self.n_pixels)):
                            answer(proto.E_LENGTH)
                        with m.Elif((run.offset != self.position) | self.busy & ~sample_open):
                            answer(proto.E_STATE)
                        with m.Else():
                            m.next = "FEED"
                    with m.Case(proto.RESULT):
                        answer(Mux(length != 0, proto.E_LENGTH, Mux(self.have_result, proto.OK, proto.E_STATE)),
                               Mux((length == 0) & self.have_result, self.result_bytes, 0), Body.RESULT)
                    with m.Default():
                        answer(proto.E_UNKNOWN)
            with m.State("ACCESS"):  # WRITE's words or READ's read-back through the memory access
                m.d.comb += [self.route.eq(Route.WRITE), self.access.valid.eq(1)]
                with m.If(self.access.ready):
                    m.next = "ACCESS_DONE"
            with m.State("ACCESS_DONE"):
                m.d.comb += [self.route.eq(Route.WRITE), self.access_done.ready.eq(1)]
                with m.If(self.access_done.valid):
                    answer(self.access_done.payload.status, self.access_done.payload.length, Body.MEMORY)
            with m.State("FEED"):  # a RUN chunk's pixels through the feeder
                m.d.comb += [self.route.eq(Route.PIXELS), self.chunk.valid.eq(1)]
                with m.If(self.chunk.ready):
                    m.next = "FEED_DONE"
            with m.State("FEED_DONE"):
                m.d.comb += [self.route.eq(Route.PIXELS), self.chunk_done.ready.eq(1)]
                with m.If(self.chunk_done.valid):
                    answer(proto.OK, Mux(self.chunk_done.payload.sample_done, self.result_bytes, 0), Body.RESULT)
            with m.State("RESET"):  # the accelerator's registers, then an init scan of every membrane
                m.d.comb += self.accel_reset.eq(1)
                m.next = "INIT"
            with m.State("INIT"):
                m.d.comb += self.init_start.eq(1)
                m.next = "SETTLE"
            with m.State("SETTLE"):
                m.next = "INIT_WAIT"
            with m.State("INIT_WAIT"):
                with m.If(~self.busy):
                    answer(proto.OK)
            with m.State("REPLY"):
                m.d.comb += [self.reply.valid.eq(1), self.frame.ready.eq(self.reply.ready)]
                with m.If(self.reply.ready):
                    m.next = "IDLE"
        return m
