"""cocotb bench behind `qpsnn serve-sim`: the UART top level with its RX/TX pins bridged to a TCP socket,
or the register-window top level with register reads and writes bridged to one. Serves one client at a
time until the process is stopped. The job comes in the file $QPSNN_BENCH_JOB."""
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

from .uart_model import CLOCK_NS, UARTHostModel


def _listen(port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
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


async def _serve_uart(dut, conn: socket.socket, uart: UARTHostModel) -> None:
    quiet = 0
    while True:
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


async def _serve_mmio(dut, conn: socket.socket) -> None:
    buf = b""
    while True:
        wait = 0 if buf else 0.001
        readable, _, _ = select.select([conn], [], [], wait)
        if readable:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        if not buf:
            await ClockCycles(dut.clk, 64)
            continue
        out = bytearray()
        while len(buf) >= 9:
            op, addr, value = buf[0:1], *struct.unpack_from("<II", buf, 1)
            buf = buf[9:]
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
                if addr == 0x4 and value >> 16 == 0:
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
    srv = _listen(job["port"])
    with open(job["port_file"] + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.replace(job["port_file"] + ".tmp", job["port_file"])
    clients = 0
    while job.get("clients") is None or clients < job["clients"]:
        readable, _, _ = select.select([srv], [], [], 0.01)
        if not readable:
            await ClockCycles(dut.clk, 16)
            continue
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients += 1
        try:
            if uart is not None:
                await _serve_uart(dut, conn, uart)
            else:
                await _serve_mmio(dut, conn)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
