"""Byte transports to an accelerator: a serial line (any pyserial URL: ``/dev/ttyUSB1``, ``loop://``), a TCP
socket (``socket://HOST:PORT``, `qpsnn serve-sim`'s UART) or a memory-mapped register window (``mmio:///sys/bus/pci/devices/
0000:01:00.0/resource0`` for a PCI BAR on Linux, ``mmio+socket://HOST:PORT`` for the simulated window).

A transport moves bytes and nothing else; framing, retries and meaning live in `qpsnn.sw.device`.
"""
from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import time

from . import protocol as proto
from .errors import DeviceBusy, DeviceTimeout, NoDeviceError


class SerialTransport:
    def __init__(self, url: str, baudrate: int = 115200):
        import serial

        try:
            self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05, write_timeout=5.0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise NoDeviceError(f"no device at {url}: {exc}") from None
        self.url = url

    def write(self, data: bytes) -> None:
        import serial

        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise NoDeviceError(f"the connection to {self.url} failed while writing: {exc}") from None

    def read(self, deadline: float) -> bytes:
        """Whatever arrives before ``deadline`` (time.monotonic); returns early once something came."""
        import serial

        try:
            while True:
                waiting = self.port.in_waiting
                data = self.port.read(max(1, waiting))
                if data or time.monotonic() >= deadline:
                    return data
        except (serial.SerialException, OSError) as exc:
            raise NoDeviceError(f"the connection to {self.url} failed while reading: {exc}") from None

    def drain(self) -> bytes:
        """What has arrived and not been read, without waiting: stale replies, or a busy notice the other end
        sent before it hung up (which the caller must see, so the bytes are returned, not dropped)."""
        import serial

        out = bytearray()
        try:
            while self.port.in_waiting:
                data = self.port.read(self.port.in_waiting)
                if not data:
                    break
                out += data
        except (serial.SerialException, OSError):
            pass  # it hung up: what came before is returned, and the next read or write says so
        return bytes(out)

    def close(self) -> None:
        self.port.close()


class SocketTransport:
    """``socket://HOST:PORT`` on a plain TCP socket. Not pyserial's handler: it drops whatever arrives while it
    opens, and a server serving another client answers a newcomer at once with a busy notice and hangs up."""

    def __init__(self, url: str, timeout: float = 5.0):
        try:
            self.sock = socket.create_connection(host_port(url, "socket://"), timeout=timeout)
        except (OSError, OverflowError) as exc:
            raise NoDeviceError(f"no device at {url}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.url = url

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NoDeviceError(f"the connection to {self.url} failed while writing: {exc}") from None

    def read(self, deadline: float) -> bytes:
        """Whatever arrives before ``deadline`` (time.monotonic); returns early once something came."""
        try:
            while True:
                wait = max(0.0, deadline - time.monotonic())
                if select.select([self.sock], [], [], min(wait, 0.05))[0]:
                    data = self.sock.recv(1 << 16)
                    if not data:
                        raise NoDeviceError(f"the connection to {self.url} failed while reading: it hung up")
                    return data
                if wait == 0:
                    return b""
        except OSError as exc:
            raise NoDeviceError(f"the connection to {self.url} failed while reading: {exc}") from None

    def drain(self) -> bytes:
        """What has arrived and not been read, without waiting (see `SerialTransport.drain`)."""
        out = bytearray()
        try:
            while select.select([self.sock], [], [], 0)[0]:
                data = self.sock.recv(1 << 16)
                if not data:
                    break  # it hung up: the next read or write says so
                out += data
        except OSError:
            pass
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


class SysfsBAR:
    """A PCI BAR through ``mmap`` of its sysfs resource file (Linux; needs read-write access)."""

    def __init__(self, path: str, size: int = 4096):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_SYNC | os.O_NONBLOCK)
        except OSError as exc:
            raise NoDeviceError(f"cannot map the register window {path}: {exc.strerror}") from None
        try:
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as exc:  # ValueError: the file is shorter than the window
            os.close(self.fd)
            raise NoDeviceError(f"cannot map {size} bytes of the register window {path}: {exc}") from None

    def read32(self, addr: int) -> int:
        return struct.unpack_from("<I", self.map, addr)[0]

    def write32(self, addr: int, value: int) -> None:
        struct.pack_into("<I", self.map, addr, value)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class SocketBAR:
    """The simulated register window of ``qpsnn serve-sim --link mmio`` over TCP (the codec:
    `qpsnn.sw.protocol.bar_write` / `bar_read`). Writes are pipelined."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise NoDeviceError(f"no simulated register window at {host}:{port}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.where = f"{host}:{port}"

    def write32(self, addr: int, value: int) -> None:
        self.sock.sendall(proto.bar_write(addr, value))

    def write32_many(self, addr: int, values) -> None:
        self.sock.sendall(b"".join(proto.bar_write(addr, v) for v in values))

    def read32(self, addr: int) -> int:
        return self.read32_many(addr, 1)[0]

    def read32_many(self, addr: int, n: int) -> list[int]:
        self.sock.sendall(proto.bar_read(addr) * n)
        data = b""
        try:
            while len(data) < 4 * n:
                chunk = self.sock.recv(4 * n - len(data))
                if not chunk:
                    raise NoDeviceError(f"the simulated register window at {self.where} closed the connection")
                data += chunk
                if data.startswith(proto.BAR_BUSY):  # no register of the window reads as this
                    raise DeviceBusy(f"mmio+socket://{self.where}: {proto.ERRORS[proto.E_BUSY]}")
        except socket.timeout:
            raise DeviceTimeout(f"the simulated register window at {self.where} did not answer a read") from None
        return list(struct.unpack(f"<{n}I", data))

    def close(self) -> None:
        self.sock.close()


class MMIOTransport:
    """The command stream through the register window's FIFOs."""

    def __init__(self, bar):
        self.bar = bar
        ident = bar.read32(proto.Reg.ID)
        if ident != proto.MMIO_ID_VALUE:
            raise NoDeviceError(f"the register window does not hold a qpsnn accelerator (ID {ident:#010x}, "
                                f"expected {proto.MMIO_ID_VALUE:#010x})")

    def _many_write(self, values) -> None:
        if hasattr(self.bar, "write32_many"):
            self.bar.write32_many(proto.Reg.CMD, values)
        else:
            for v in values:
                self.bar.write32(proto.Reg.CMD, v)

    def _many_read(self, n: int) -> list[int]:
        if hasattr(self.bar, "read32_many"):
            return self.bar.read32_many(proto.Reg.RESP, n)
        return [self.bar.read32(proto.Reg.RESP) for _ in range(n)]

    def write(self, data: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        pos = 0
        while pos < len(data):
            free, _ = proto.status_fields(self.bar.read32(proto.Reg.STATUS))
            if free == 0:
                if time.monotonic() > deadline:
                    raise DeviceTimeout("the device's command FIFO stayed full")
                time.sleep(0.0005)
                continue
            part = data[pos:pos + free]
            self._many_write(part)
            pos += len(part)

    def read(self, deadline: float) -> bytes:
        while True:
            _, level = proto.status_fields(self.bar.read32(proto.Reg.STATUS))
            if level:
                return bytes(v & 0xFF for v in self._many_read(level) if v & proto.RESP_VALID)
            if time.monotonic() >= deadline:
                return b""
            time.sleep(0.0002)

    def drain(self) -> bytes:
        return self.read(time.monotonic())

    def close(self) -> None:
        self.bar.close()


def host_port(url: str, scheme: str) -> tuple[str, int]:
    """(host, port) of ``scheme://HOST:PORT``; the host defaults to 127.0.0.1."""
    host, _, port = url[len(scheme):].rpartition(":")
    if not port.isdigit():
        raise NoDeviceError(f"bad URL {url!r}: expected {scheme}HOST:PORT")
    return host or "127.0.0.1", int(port)


def open_transport(url: str, baudrate: int = 115200):
    if url.startswith("mmio+socket://"):
        return MMIOTransport(SocketBAR(*host_port(url, "mmio+socket://")))
    if url.startswith("mmio://"):
        return MMIOTransport(SysfsBAR(url[len("mmio://"):]))
    if url.startswith("socket://"):
        return SocketTransport(url)
    return SerialTransport(url, baudrate)
