"""cocotb bench behind `qpsnn serve-sim`: the UART top level with its RX/TX pins bridged to a TCP socket,
or the register-window top level with register reads and writes bridged to one (the codec:
`qpsnn.sw.protocol.bar_ops`). Serves one client at a time until the process is stopped; a second client
meanwhile is told so (an E_BUSY reply, or BAR_BUSY) and hung up on. When a client leaves, the bytes it
queued and not yet delivered are dropped, like a cable pulled: the device itself is not reset, the next
client's driver resynchronises it. The job comes in the file $QPSNN_BENCH_JOB."""
from __future__ import annotations

import json
import os
import select
import socket
import struct
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer

from qpsnn.sw import protocol as proto

from .uart_model import CLOCK_NS, UARTHostModel


def _listen(port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(4)
    srv.setblocking(False)
    return srv


async def _reset(dut):
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    if hasattr(dut, "rx"):
        dut.rx.value = 1  # an idle line from the start, or the receiver sees a start bit
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)


def listen_and_announce(job: dict) -> socket.socket:
    """The server socket, its port written (atomically) where `qpsnn serve-sim` waits for it."""
    srv = _listen(job["port"])
    with open(job["port_file"] + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.replace(job["port_file"] + ".tmp", job["port_file"])
    return srv


async def serve_clients(job: dict, clock, srv: socket.socket, serve_one) -> None:
    """One client at a time (``await serve_one(conn)``) until ``job["clients"]`` were served, or forever;
    the design keeps running between clients."""
    clients = 0
    while job.get("clients") is None or clients < job["clients"]:
        if not select.select([srv], [], [], 0.01)[0]:
            await ClockCycles(clock, 16)
            continue
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients += 1
        try:
            await serve_one(conn)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()


def take_ops(conn: socket.socket, buf: bytes) -> bytes | None:
    """``buf`` and everything the client has sent since (waiting a little when there is nothing to do), or
    None when it has left."""
    wait = 0 if len(buf) >= proto.BAR_OP.size else 0.001
    while select.select([conn], [], [], wait)[0]:
        data = conn.recv(1 << 20)
        if not data:
            return None
        buf += data
        wait = 0
    return buf


OPS_PER_TURN = 1024  # register operations between two looks at the client (has it left?)


def _refuse_others(srv: socket.socket, busy: bytes) -> None:
    """Any client that connects while one is served: one line of why, then hung up on."""
    while select.select([srv], [], [], 0)[0]:
        other, _ = srv.accept()
        try:
            other.sendall(busy)
        except OSError:
            pass
        other.close()


async def _serve_uart(dut, conn: socket.socket, uart: UARTHostModel, srv: socket.socket) -> None:
    quiet = 0
    while True:
        _refuse_others(srv, proto.reply(proto.E_BUSY))
        readable, _, _ = select.select([conn], [], [], 0)
        if readable:
            data = conn.recv(65536)
            if not data:
                return
            uart.send(data)
            quiet = 0
        if uart.received:
            conn.sendall(uart.take())
            quiet = 0
        # let the design run a few byte times; sleep a little when nothing moves so an idle server costs no CPU
        await Timer(uart.byte_ns * 4, unit="ns")
        quiet += 1
        if quiet > 8 and uart.idle.is_set():
            time.sleep(0.001)


async def _serve_mmio(dut, conn: socket.socket, srv: socket.socket) -> None:
    buf = b""
    while True:
        _refuse_others(srv, proto.BAR_BUSY)
        buf = take_ops(conn, buf)
        if buf is None:
            return  # it left: the operations it queued are dropped, like a pulled cable's
        if len(buf) < proto.BAR_OP.size:
            await ClockCycles(dut.clk, 64)
            continue
        out = bytearray()
        whole = min(len(buf) // proto.BAR_OP.size, OPS_PER_TURN) * proto.BAR_OP.size
        ops, buf = proto.bar_ops(buf[:whole])[0], buf[whole:]
        for op, addr, value in ops:
            dut.addr.value = addr
            if op == b"W":
                dut.w_data.value, dut.w_en.value = value, 1
                await RisingEdge(dut.clk)
                dut.w_en.value = 0
            else:
                dut.r_en.value = 1
                await RisingEdge(dut.clk)
                dut.r_en.value = 0
                await RisingEdge(dut.clk)
                value = int(dut.r_data.value)
                out += struct.pack("<I", value)
                if addr == proto.Reg.STATUS and proto.status_fields(value)[1] == 0:
                    await ClockCycles(dut.clk, 256)  # the host's polling interval: nothing to read yet
        if out:
            conn.sendall(bytes(out))


@cocotb.test()
async def serve(dut):
    with open(os.environ["QPSNN_BENCH_JOB"]) as f:
        job = json.load(f)
    if job["mode"] == "mmio":
        dut.w_en.value, dut.r_en.value, dut.addr.value = 0, 0, 0
    await _reset(dut)
    uart = UARTHostModel(dut, job["divisor"]) if job["mode"] == "uart" else None
    srv = listen_and_announce(job)

    async def serve_one(conn):
        if uart is None:
            return await _serve_mmio(dut, conn, srv)
        try:
            await _serve_uart(dut, conn, uart, srv)
        finally:
            uart.flush()  # what the departed client queued never reaches the device

    await serve_clients(job, dut.clk, srv, serve_one)
