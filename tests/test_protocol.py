"""The host protocol's framing: CRC, frames, identify records and the driver's reply parser."""
import os

import pytest

from qpsnn.sw import protocol as proto


def test_crc_is_ccitt_false():
    assert proto.crc16(b"123456789") == 0x29B1


def test_crc_matches_amaranth_catalog():
    crc = pytest.importorskip("amaranth.lib.crc.catalog")
    for n in (0, 1, 7, 100):
        data = os.urandom(n)
        assert proto.crc16(data) == crc.CRC16_CCITT_FALSE(data_width=8).compute(data)


def test_frame_layout_and_residue():
    frame = proto.request(proto.WRITE, b"\x01\x02\x03", tag=0x9C)
    assert frame[:5] == bytes([0xA5, proto.WRITE, 0x9C, 3, 0]) and frame[5:8] == b"\x01\x02\x03"
    assert len(frame) == proto.FRAME_BYTES + 3
    assert proto.crc16(frame[1:]) == 0  # CRC sent high byte first: the receiver ends on residue 0


def test_reply_parser_skips_noise_and_reports_damage():
    good = proto.reply(proto.OK, b"hello", tag=200)
    bad = bytearray(proto.reply(proto.E_RANGE))
    bad[-1] ^= 1
    parser = proto.ReplyParser()
    parser.feed(b"\x00\x13" + bytes(bad) + good[:5])
    assert parser.take() == (None, bytes(bad), None)
    assert parser.take() is None  # the good reply is not complete yet
    parser.feed(good[5:])
    assert parser.take() == proto.Reply(proto.OK, b"hello", 200)


def test_enums_are_the_module_constants_and_field_tables_add_up():
    assert proto.WRITE is proto.Command.WRITE and proto.REGION_BIAS is proto.Region.BIAS
    assert proto.E_BUSY == proto.Status.E_BUSY and set(proto.ERRORS) == set(proto.Status) - {proto.OK}
    assert (proto.WRITE_HEADER, proto.READ_PAYLOAD, proto.RUN_HEADER, proto.RESULT_FIXED) == (5, 7, 2, 6)
    assert proto.read_payload(1, 2, 0x030405, 9) == bytes([1, 2, 5, 4, 3, 9, 0])


def test_bar_codec_round_trips_and_keeps_a_partial_operation():
    wire = proto.bar_write(proto.Reg.CMD, 0xA5) + proto.bar_read(proto.Reg.STATUS)
    ops, rest = proto.bar_ops(wire + b"W\x08")
    assert ops == [(b"W", proto.Reg.CMD, 0xA5), (b"R", proto.Reg.STATUS, 0)] and rest == b"W\x08"
    assert proto.status_fields(0x0003_00FF) == (0xFF, 3)


def test_device_info_round_trip():
    info = proto.DeviceInfo(2, 8, 4, 10, 21, 8, 1024, 0xDEADBEEF, (1, 8, 8),
                            (proto.LayerInfo("conv", 8, 16, 18, 128), proto.LayerInfo("output", 4, 10, 256, 2)), 9)
    assert proto.DeviceInfo.from_bytes(info.to_bytes()) == info
    with pytest.raises(ValueError):
        proto.DeviceInfo.from_bytes(b"NOPE" + bytes(30))


def test_result_decoding():
    payload = (3).to_bytes(2, "little") + (1234).to_bytes(4, "little") + b"".join(
        v.to_bytes(4, "little", signed=True) for v in (-5, 7))
    assert proto.decode_result(payload, 2) == (3, 1234, [-5, 7])


def test_sample_bytes_counts_the_frames_a_sample_takes():
    import numpy as np

    from qpsnn.sw.device import run_payloads

    for pixels, max_payload in ((64, 1024), (64, 64), (784, 512)):
        info = proto.DeviceInfo(1, 1, 4, 10, 20, 8, max_payload, 0, (1, 1, pixels), ())
        payloads = run_payloads(np.zeros(pixels, dtype=np.uint8), info)
        wire = sum(len(proto.request(proto.RUN, p)) for p in payloads) + (len(payloads) - 1) * len(proto.reply(proto.OK)) \
            + len(proto.reply(proto.OK, bytes(proto.RESULT_FIXED + 4 * 10)))
        assert proto.sample_bytes(pixels, 10, max_payload) == wire


def test_an_unrolled_layer_is_its_own_kind_with_its_own_fingerprint_and_row_order(tiny_net):
    """A device whose layer 1 runs unrolled says so in IDENTIFY; the driver then builds the same geometry
    (its fingerprint differs from the event-driven one) and sends that layer's rows in the file's order."""
    from conftest import random_model

    from qpsnn.sw.device import model_words
    from qpsnn.sw.fold import fold
    from qpsnn.sw.geometry import geometry_of

    net = fold(random_model("c3-p2-c4-p2-fc4", (1, 8, 8)), lanes=4)
    events, unrolled = geometry_of(net, 4, 9), geometry_of(net, 4, 9, unrolled=True)
    assert proto.fingerprint(events) != proto.fingerprint(unrolled)
    layers = tuple(proto.LayerInfo(lg.hw_kind, lg.bits, lg.channels, lg.weight_words, lg.neuron_words)
                   for lg in unrolled.layers)
    info = proto.DeviceInfo(proto.VERSION, 4, net.timesteps, 4, 20, 2, 512, proto.fingerprint(unrolled), (1, 8, 8),
                            layers, 9)
    back = proto.DeviceInfo.from_bytes(info.to_bytes())
    assert back.unrolled and [l.kind for l in back.layers] == ["conv", "unrolled", "output"]
    kernel_parallel, file_order = model_words(net, 4, 9), model_words(net, 4, 1)
    sent = model_words(net, 4, 9, unrolled=back.unrolled)
    assert sent[0] == kernel_parallel[0]  # the encoder stays kernel-parallel: offset-major rows
    (weights1,) = [w for layer, region, w in sent if layer == 1 and region == proto.REGION_WEIGHTS]
    (rows1,) = [w for layer, region, w in file_order if layer == 1 and region == proto.REGION_WEIGHTS]
    lg = unrolled.layers[1]
    used, stride = 9 * lg.groups, lg.channel_stride  # each channel's rows padded to a power-of-two stride
    assert stride & (stride - 1) == 0 and len(weights1) == lg.weight_words == lg.in_channels * stride
    for c in range(lg.in_channels):
        assert weights1[c * stride:c * stride + used] == rows1[c * used:(c + 1) * used]
        assert not any(weights1[c * stride + used:(c + 1) * stride])
