"""The driver's errors against misbehaving peers (plain Python servers, no simulator): a closed port, a silent
device, another protocol version, a model that does not fit, a device error code, and retries that recover."""
import socket
import threading
import time

import pytest

from qpsnn.hw.geometry import geometry_of
from qpsnn.sw import protocol as proto
from qpsnn.sw.device import Device
from qpsnn.sw.errors import DeviceBusy, DeviceRefused, DeviceTimeout, ModelMismatchError, NoDeviceError, ProtocolVersionError


class FakeDevice(threading.Thread):
    """A TCP peer that answers each request frame with ``handler(cmd, payload)``: (status, payload) sent as a
    reply with the request's tag, raw bytes sent as they are, or None. RESET is answered OK unless
    ``handle_reset``."""

    def __init__(self, handler, handle_reset=False):
        super().__init__(daemon=True)
        self.handler, self.handle_reset = handler, handle_reset
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.url = f"socket://127.0.0.1:{self.srv.getsockname()[1]}"
        self.requests = []
        self.start()

    def run(self):
        conn, _ = self.srv.accept()
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while len(buf) >= proto.FRAME_BYTES and buf[0] == proto.REQUEST_SOF:
                n = int.from_bytes(buf[3:5], "little")
                if len(buf) < proto.FRAME_BYTES + n:
                    break
                cmd, tag, payload, buf = buf[1], buf[2], buf[5:5 + n], buf[proto.FRAME_BYTES + n:]
                self.requests.append(cmd)
                out = (proto.OK, b"") if cmd == proto.RESET and not self.handle_reset else self.handler(cmd, payload)
                if isinstance(out, tuple):
                    out = proto.reply(out[0], out[1], tag)
                if out:
                    conn.sendall(out)
            if buf and buf[0] != proto.REQUEST_SOF:
                buf = buf[1:]


def _info(net, version=proto.VERSION, fingerprint=None):
    geo = geometry_of(net)
    layers = tuple(proto.LayerInfo(lg.kind, lg.bits, lg.channels, lg.weight_words, lg.neuron_words) for lg in geo.layers)
    fp = proto.fingerprint(geo) if fingerprint is None else fingerprint
    return proto.DeviceInfo(version, geo.lanes, geo.timesteps, geo.classes, geo.membrane_bits, 8, 1024, fp,
                            tuple(net.in_shape), layers)


def test_closed_port_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    start = time.monotonic()
    with pytest.raises(NoDeviceError, match=f"no device at socket://127.0.0.1:{port}"):
        Device(f"socket://127.0.0.1:{port}")
    assert time.monotonic() - start < 5


def test_missing_serial_port_is_a_clear_error():
    with pytest.raises(NoDeviceError, match="/dev/ttyQPSNN_NONE"):
        Device("/dev/ttyQPSNN_NONE")


def test_silent_device_times_out_within_its_budget():
    fake = FakeDevice(lambda cmd, payload: None, handle_reset=True)
    dev = Device(fake.url, timeout=0.3, retries=2)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"reset: no reply .* 0.3 s, 3 tries"):
        dev.identify()
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3.0
    assert fake.requests == [proto.RESET] * 3  # the connection's resync comes first


def test_other_protocol_version(tiny_net):
    fake = FakeDevice(lambda cmd, p: (proto.OK, _info(tiny_net, version=9).to_bytes()))
    with pytest.raises(ProtocolVersionError, match="version 9"):
        Device(fake.url, timeout=1).identify()


def test_model_that_does_not_fit_is_refused_before_loading(tiny_net):
    fake = FakeDevice(lambda cmd, p: (proto.OK, _info(tiny_net, fingerprint=1).to_bytes()))
    dev = Device(fake.url, timeout=1)
    with pytest.raises(ModelMismatchError, match="does not fit"):
        dev.load(tiny_net)
    assert proto.WRITE not in fake.requests  # nothing was written


def test_device_error_code_is_reported(tiny_net):
    def handler(cmd, payload):
        if cmd == proto.IDENTIFY:
            return proto.OK, _info(tiny_net).to_bytes()
        return proto.E_RANGE, b""
    dev = Device(FakeDevice(handler).url, timeout=1)
    with pytest.raises(DeviceRefused, match="refused begin-load with code 5: address out of range"):
        dev.load(tiny_net)


def test_damaged_replies_are_retried(tiny_net):
    replies = iter([b"\x5a\x00\x00\x00\x00\x12\x34", (proto.E_CRC, b""), (proto.OK, _info(tiny_net).to_bytes())])
    fake = FakeDevice(lambda cmd, p: next(replies))
    dev = Device(fake.url, timeout=0.5, retries=3)
    assert dev.identify().version == proto.VERSION
    assert dev.stats.retries == 2


def test_stale_replies_are_skipped_by_their_tag(tiny_net):
    """A reply left over from a request whose client went away (another tag) is not taken for this one's."""
    stale = proto.reply(proto.OK, b"\x07" * 46, tag=0)  # a RUN result for someone else

    def handler(cmd, payload):
        return stale + stale if cmd == proto.IDENTIFY else None
    fake = FakeDevice(handler)
    dev = Device(fake.url, timeout=0.3, retries=0)
    dev._tag = 100  # so the stale tag 0 cannot be this request's
    with pytest.raises(DeviceTimeout, match="identify: no reply"):
        dev.identify()
    assert dev.stats.stale_replies == 2


def test_a_busy_link_says_so(tiny_net):
    fake = FakeDevice(lambda cmd, p: proto.reply(proto.E_BUSY), handle_reset=True)
    with pytest.raises(DeviceBusy, match="busy: one client at a time"):
        Device(fake.url, timeout=1).identify()
    assert fake.requests == [proto.RESET]


def test_busy_notice_sent_before_the_first_request_is_not_drained_away():
    """A server serving another client answers a newcomer at once with E_BUSY and hangs up, maybe while the
    newcomer is still opening the connection or before its first request: the driver drops stale bytes, but
    must still see that notice (dropping it left a bare 'socket disconnected' under load). Round 0 waits
    until the notice is surely in; the others race it against the open."""
    for rnd in range(20):
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def refuse():
            conn, _ = srv.accept()
            conn.sendall(proto.reply(proto.E_BUSY))
            conn.close()

        t = threading.Thread(target=refuse, daemon=True)
        t.start()
        dev = Device(f"socket://127.0.0.1:{srv.getsockname()[1]}", timeout=2, retries=0)
        if rnd == 0:
            t.join(5)
            time.sleep(0.2)
        with pytest.raises(DeviceBusy, match="one client at a time"):
            dev.identify()
        dev.close()
        srv.close()
