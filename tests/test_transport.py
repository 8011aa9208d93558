"""Transports without a device: the sysfs BAR mapping (on a plain file with the resource file's layout), the
register-window transport's byte pumping against an in-memory window, and bad URLs."""
import pytest

from qpsnn.sw.errors import NoDeviceError
from qpsnn.sw.protocol import MMIO_ID_VALUE, Reg
from qpsnn.sw.transport import MMIOTransport, SysfsBAR, open_transport

MMIO_ID, MMIO_STATUS, MMIO_CMD, MMIO_RESP = Reg.ID, Reg.STATUS, Reg.CMD, Reg.RESP


def test_sysfs_bar_maps_a_resource_file(tmp_path):
    res = tmp_path / "resource0"
    res.write_bytes(bytes(4096))
    bar = SysfsBAR(str(res))
    bar.write32(0x8, 0xDEADBEEF)
    assert bar.read32(0x8) == 0xDEADBEEF
    bar.close()
    assert res.read_bytes()[8:12] == (0xDEADBEEF).to_bytes(4, "little")


def test_missing_resource_file_is_a_clear_error(tmp_path):
    with pytest.raises(NoDeviceError, match="cannot map the register window"):
        open_transport(f"mmio://{tmp_path}/resource0")


class LoopbackWindow:
    """A register window whose device echoes every command byte back, with a 3-byte command FIFO."""

    def __init__(self, ident=MMIO_ID_VALUE):
        self.ident, self.fifo, self.writes = ident, [], 0

    def read32(self, addr):
        if addr == MMIO_ID:
            return self.ident
        if addr == MMIO_STATUS:
            return (3 - min(3, len(self.fifo))) | (len(self.fifo) << 16)
        if addr == MMIO_RESP:
            return (0x100 | self.fifo.pop(0)) if self.fifo else 0
        return 0

    def write32(self, addr, value):
        assert addr == MMIO_CMD and len(self.fifo) < 3, "wrote into a full FIFO"
        self.fifo.append(value & 0xFF)
        self.writes += 1

    def close(self):
        pass


def test_mmio_transport_respects_fifo_space_and_reads_what_is_there():
    window = LoopbackWindow()
    t = MMIOTransport(window)
    t.write(b"\x01\x02\x03")
    assert t.read(0) == b"\x01\x02\x03"
    assert window.writes == 3


def test_mmio_window_without_the_accelerator_is_refused():
    with pytest.raises(NoDeviceError, match="does not hold a qpsnn accelerator"):
        MMIOTransport(LoopbackWindow(ident=0x12345678))
