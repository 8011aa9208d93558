import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qpsnn.sw.packing import pack_rows, pack_words, packed_size, unpack_rows, word_bytes


@settings(max_examples=150, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), lanes=st.integers(1, 17), rows=st.integers(1, 9), cols=st.integers(1, 23),
       seed=st.integers(0, 2 ** 31))
def test_pack_round_trip(bits, lanes, rows, cols, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(rows, cols))
    data = pack_rows(codes, bits, lanes)
    assert len(data) == packed_size(rows, cols, bits, lanes)
    assert np.array_equal(unpack_rows(data, rows, cols, bits, lanes), codes)


def test_word_layout_lane_zero_in_low_bits():
    codes = np.array([[1, 2, 3], [3, 0, 1]])
    words = pack_words(codes, 2, 2)  # two words per row: lanes (0, 1) then (2, pad)
    assert words == [1 | (2 << 2), 3, 3 | (0 << 2), 1]
    assert word_bytes(2, 2) == 1 and word_bytes(4, 8) == 4 and word_bytes(8, 3) == 3


def test_unused_lanes_are_zero():
    data = pack_rows(np.full((1, 3), 15), 4, 8)
    assert data == bytes([0xFF, 0x0F, 0x00, 0x00])


def test_bad_codes_and_sizes_are_refused():
    with pytest.raises(ValueError):
        pack_rows(np.array([[4]]), 2, 4)
    with pytest.raises(ValueError):
        pack_rows(np.array([[-1]]), 2, 4)
    with pytest.raises(ValueError):
        unpack_rows(b"\x00" * 3, 2, 2, 4, 8)
