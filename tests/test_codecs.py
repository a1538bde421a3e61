"""Codec tests: mono round trip, evt3 against a per-word reference, malformed input."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_vlm.io.codecs import SUPPORTED_ENCODINGS, Evt3Decoder, decode_packet, make_decoder
from edge_vlm.io.codecs.evt3 import WRAP_THRESHOLD_HIGH
from edge_vlm.io.codecs.mono import decode_mono, encode_mono
from edge_vlm.events import EVENT_DTYPE, EventDecodeError, make_events

# ----------------------------------------------------------------------- mono


def test_mono_round_trip_and_bit_layout():
    ev = make_events([1000, 1005, 1000 + 2**32 - 1], [0, 345, 65535], [0, 259, 32767], [1, 0, 1])
    data = encode_mono(ev, 1000)
    assert len(data) == 24
    w = np.frombuffer(data, "<u8")
    assert int(w[1]) == 5 | (345 << 32) | (259 << 48)
    assert int(w[2]) >> 63 == 1
    out = decode_mono(data, 1000, 65536, 32768)
    assert out.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(out, ev)
    np.testing.assert_array_equal(decode_packet("mono", data, 65536, 32768, 1000), ev)
    assert len(decode_mono(b"", 0, 1, 1)) == 0


@st.composite
def _events(draw):
    n = draw(st.integers(0, 200))
    w = draw(st.integers(1, 2048))
    h = draw(st.integers(1, 2048))
    base = draw(st.integers(0, 2**62))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    off = np.sort(rng.integers(0, 2**32, n, dtype=np.int64))
    ev = make_events(base + off, rng.integers(0, w, n), rng.integers(0, h, n),
                     rng.integers(0, 2, n))
    return ev, base, w, h


@settings(max_examples=60, deadline=None)
@given(_events())
def test_mono_round_trip_property(case):
    ev, base, w, h = case
    out = make_decoder("mono").decode(encode_mono(ev, base), w, h, base)
    np.testing.assert_array_equal(out, ev)


def test_mono_encode_rejects_bad_offsets():
    ev = make_events([5], [1], [1], [1])
    with pytest.raises(EventDecodeError):
        encode_mono(ev, 6)                     # negative offset
    with pytest.raises(EventDecodeError):
        encode_mono(ev, 5 - 2**32)             # offset needs 33 bits


def test_mono_malformed():
    data = encode_mono(make_events([0, 1], [10, 20], [5, 6], [0, 1]), 0)
    with pytest.raises(EventDecodeError, match="multiple of 8"):
        decode_mono(data[:-1], 0, 64, 64)       # truncated
    with pytest.raises(EventDecodeError, match="outside"):
        decode_mono(data, 0, 20, 64)            # x == width
    with pytest.raises(EventDecodeError, match="outside"):
        decode_mono(data, 0, 64, 6)             # y == height
    for w, h in ((0, 64), (64, 0)):
        with pytest.raises(EventDecodeError):
            decode_mono(data, 0, w, h)


def test_dispatch_unknown_encoding():
    assert set(SUPPORTED_ENCODINGS) == {"mono", "evt3", "libcaer_cmp"}
    with pytest.raises(EventDecodeError, match="unsupported encoding 'bogus'"):
        decode_packet("bogus", b"", 10, 10, 0)
    with pytest.raises(EventDecodeError, match="bogus"):
        make_decoder("bogus")
    with pytest.raises(EventDecodeError):
        decode_packet("mono", b"", 10, 10, 0, decoder_state=make_decoder("evt3"))


# ----------------------------------------------------------------------- evt3


def _ref_evt3(words, st_: dict):
    """Per-word reference decoder (slow, obviously correct). Mutates ``st_``."""
    out, trig = [], []
    for w in (int(x) for x in words):
        typ, v = w >> 12, w & 0xFFF
        t = ((st_["wraps"] << 24) | (st_["hi"] << 12) | st_["lo"]) * 1000
        if typ == 0x8:
            if v - st_["hi"] < -WRAP_THRESHOLD_HIGH:
                st_["wraps"] += 1
            st_["hi"], st_["seen_high"] = v, True
        elif typ == 0x6:
            st_["lo"] = v
            st_["valid"] = st_["valid"] or st_["seen_high"]
        elif typ == 0x0:
            st_["y"] = v & 0x7FF
        elif typ == 0x3:
            st_["base"], st_["pol"] = v & 0x7FF, v >> 11
        elif typ == 0x2:
            if st_["valid"]:
                out.append((t, v & 0x7FF, st_["y"], v >> 11))
        elif typ in (0x4, 0x5):
            nb = 12 if typ == 0x4 else 8
            for i in range(nb):
                if st_["valid"] and (v >> i) & 1:
                    out.append((t, (st_["base"] + i) & 0xFFFF, st_["y"], st_["pol"]))
            st_["base"] = (st_["base"] + nb) & 0xFFFF
        elif typ == 0xA:
            if st_["valid"]:
                trig.append((t, (v >> 8) & 0xF, v & 1))
    ev = np.array(out, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    return make_events(ev["t"], ev["x"], ev["y"], ev["p"]), trig


def _ref_state():
    return dict(y=0, lo=0, hi=0, wraps=0, base=0, pol=0, seen_high=False, valid=False)


_TYPES = np.array([0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0xA, 0xE, 0xF])
_PROBS = np.array([12, 20, 6, 10, 8, 14, 2, 6, 3, 2, 2], dtype=float)


def _random_words(rng, n):
    typ = rng.choice(_TYPES, n, p=_PROBS / _PROBS.sum()).astype(np.uint16)
    return ((typ << 12) | rng.integers(0, 4096, n).astype(np.uint16)).astype("<u2")


def _w(typ, v):
    return (typ << 12) | v


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 600), st.lists(st.integers(0, 600), max_size=6))
def test_evt3_matches_reference_with_any_packet_split(seed, n, cuts):
    words = _random_words(np.random.default_rng(seed), n)
    ref, trig = _ref_evt3(words, _ref_state())
    dec = Evt3Decoder()
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    got = np.concatenate([dec.decode(words[a:b].tobytes()) for a, b in zip(bounds, bounds[1:])])
    np.testing.assert_array_equal(got, ref)
    assert dec.triggers_rising == sum(v for *_, v in trig)
    assert dec.triggers_falling == sum(1 - v for *_, v in trig)
    assert dec.events_decoded == len(ref)


def test_evt3_vectors_and_time():
    words = np.array([
        _w(0x2, 5),                     # before any time: dropped
        _w(0x8, 0x012), _w(0x6, 0x345),  # t = 0x012345 us
        _w(0x0, 700),                   # y = 700
        _w(0x2, 0x800 | 17),            # ON event x=17
        _w(0x3, 100),                   # base 100, OFF
        _w(0x4, 0b1000_0000_0101),      # x=100,102,111 ; base -> 112
        _w(0x5, 0b1000_0001),           # x=112,119     ; base -> 120
        _w(0x3, 0x800 | 3),             # base 3, ON
        _w(0xA, (5 << 8) | 1),          # trigger id 5 rising
        _w(0x6, 0x346), _w(0x5, 0b10),  # x=4 at t+1
    ], dtype="<u2")
    dec = Evt3Decoder(width=1280, height=720)
    ev = dec.decode(words.tobytes())
    t0 = 0x012345 * 1000
    assert ev["x"].tolist() == [17, 100, 102, 111, 112, 119, 4]
    assert ev["y"].tolist() == [700] * 7
    assert ev["p"].tolist() == [1, 0, 0, 0, 0, 0, 1]
    assert ev["t"].tolist() == [t0] * 6 + [t0 + 1000]
    assert (dec.triggers_rising, dec.triggers_falling) == (1, 0)
    assert dec.last_triggers["id"].tolist() == [5]
    assert dec.time_us == 0x012346


def test_evt3_time_wrap_and_jitter():
    dec = Evt3Decoder()
    seq = [(0x8, 0xFFE), (0x6, 0xFFF), (0x2, 1),
           (0x8, 0xFFC), (0x6, 0), (0x2, 2),          # small step back: jitter, no wrap
           (0x8, 0x000), (0x6, 5), (0x2, 3)]          # big step back: 24-bit wrap
    ev = dec.decode(np.array([_w(a, b) for a, b in seq], "<u2").tobytes())
    assert ev["t"].tolist() == [(0xFFE << 12 | 0xFFF) * 1000, (0xFFC << 12) * 1000,
                                ((1 << 24) | 5) * 1000]
    ev = dec.decode(np.array([_w(0x2, 4)], "<u2").tobytes())     # state carries
    assert ev["t"].tolist() == [((1 << 24) | 5) * 1000]


def test_evt3_malformed_leaves_state_intact():
    words = _random_words(np.random.default_rng(1), 400)
    whole, _ = _ref_evt3(words, _ref_state())
    dec = Evt3Decoder()
    a = dec.decode(words[:200].tobytes())
    with pytest.raises(EventDecodeError, match="16-bit"):
        dec.decode(words[200:].tobytes()[:-1])                    # odd byte count
    with pytest.raises(EventDecodeError, match="unsupported word type 0x9"):
        dec.decode(np.array([0x9000], "<u2").tobytes())
    b = dec.decode(words[200:].tobytes())
    np.testing.assert_array_equal(np.concatenate([a, b]), whole)


def test_evt3_out_of_range_and_zero_size():
    words = np.array([_w(0x8, 1), _w(0x6, 1), _w(0x0, 479), _w(0x2, 639)], "<u2").tobytes()
    assert len(Evt3Decoder().decode(words, 640, 480)) == 1
    with pytest.raises(EventDecodeError, match="outside sensor 639x480"):
        Evt3Decoder().decode(words, 639, 480)
    with pytest.raises(EventDecodeError, match="outside sensor 640x479"):
        decode_packet("evt3", words, 640, 479, 0)
    with pytest.raises(EventDecodeError):
        decode_packet("evt3", words, 0, 480, 0)
    dec = Evt3Decoder()
    dec.decode(words, 640, 480)
    dec.reset()
    assert dec.time_us is None and dec.events_decoded == 0
    assert len(dec.decode(b"")) == 0
