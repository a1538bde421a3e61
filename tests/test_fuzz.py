"""Fuzzing of every event decoder and reader (hypothesis).

Contract checked: any input -- random bytes, structured random words behind a
valid header, or valid inputs (real evt3 / libcaer_cmp packets from
../shared/data/real, files written by our writers) with bytes flipped,
set, inserted, deleted or truncated -- gives either a valid event array
(EVENT_DTYPE, 1-D; info with a positive sensor size) or
:class:`edge_vlm.events.EventDecodeError`; never another exception, never a
hang (per-example hypothesis ``deadline`` plus a pytest-timeout limit per test).

Targets: codecs mono / evt3 (multi-packet streams) / libcaer_cmp, AEDAT 3.1
(edge_vlm.dvs128), AEDAT 2.0, Prophesee RAW (EVT 2.0 + 3.0) and DAT, RPG
events.txt, AEDAT 4.0 (dv_processing in a child process: few examples, each
costs a process start).

Profiles (environment variable ``EDGE_VLM_FUZZ``):

* ``ci`` (default, used by ``make test``): 600 examples per test (6 for
  AEDAT 4.0), derandomized (the same examples every run); about 20 s for the
  whole file on 2 cores;
* ``long``: 10,000 examples per decoder/reader (300 for AEDAT 4.0, which
  starts a process per example), random seed, about 25 min on 2 cores::

      EDGE_VLM_FUZZ=long python -m pytest tests/test_fuzz.py

  (add ``--hypothesis-show-statistics`` for per-test example counts).
"""
from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import SHARED_REAL
from edge_vlm.io.codecs import Evt3Decoder, LibcaerCmpDecoder, decode_mono, encode_mono
from edge_vlm.io.codecs.libcaer_cmp import encode_libcaer_cmp
from edge_vlm.io.formats.aedat31 import read_aedat31, write_aedat31
from edge_vlm.events import EVENT_DTYPE, EventDecodeError, make_events
from edge_vlm.io.formats.aedat2 import decode_aedat2, write_aedat2
from edge_vlm.io.formats.prophesee import (decode_dat, decode_raw, write_dat, write_raw_evt2,
    write_raw_evt3)
from edge_vlm.io.formats.rpg import decode_rpg, write_rpg

PROFILE = os.environ.get("EDGE_VLM_FUZZ", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"EDGE_VLM_FUZZ must be 'ci' or 'long', not {PROFILE!r}")
LONG = PROFILE == "long"
N = 10_000 if LONG else 600                 # examples per test
N_AEDAT4 = 300 if LONG else 6

FUZZ = settings(max_examples=N, deadline=timedelta(seconds=3), database=None,
                derandomize=not LONG, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
try:
    import pytest_timeout  # noqa: F401
    HANG = pytest.mark.timeout(7200 if LONG else 120)
except ImportError:           # pragma: no cover
    def HANG(f):
        return f

TMP = tempfile.mkdtemp(prefix="edge_vlm_fuzz_")
atexit.register(shutil.rmtree, TMP, True)


def _events(n: int, w: int, h: int, seed: int, t0_us: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    us = t0_us + np.cumsum(rng.integers(0, 40, n))
    return make_events(us * 1000, rng.integers(0, w, n), rng.integers(0, h, n),
                       rng.integers(0, 2, n))


def _ok(result) -> None:
    """A decoder result must be a valid event array (and info with a sensor size)."""
    ev, info = result if isinstance(result, tuple) else (result, None)
    assert isinstance(ev, np.ndarray) and ev.dtype == EVENT_DTYPE and ev.ndim == 1
    if info is not None and "width" in info:       # read_aedat31's info has no size
        assert int(info["width"]) > 0 and int(info["height"]) > 0


def _run(fn, *args, **kw) -> None:
    try:
        res = fn(*args, **kw)
    except EventDecodeError:
        return
    _ok(res)


@st.composite
def mutated(draw, seeds):
    """A seed with 1-8 random byte edits (set, bit flip, insert, delete, truncate)."""
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == 0 and b:
            b[pos] = draw(st.integers(0, 255))
        elif op == 1 and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 2:
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3:
            del b[pos:pos + draw(st.integers(1, 8))]
        elif op == 4 and draw(st.integers(0, 3)) == 0:
            del b[pos:]
    return bytes(b)


def words16(types):
    """Random 16-bit words whose top nibble is drawn mostly from ``types``."""
    nib = st.one_of(st.sampled_from(types), st.integers(0, 15))
    word = st.tuples(nib, st.integers(0, 0xFFF)).map(lambda t: (t[0] << 12) | t[1])
    return st.lists(word, max_size=64).map(lambda ws: struct.pack(f"<{len(ws)}H", *ws))


sizes = st.one_of(st.integers(1, 2048), st.sampled_from([0, -1, 65535, 1 << 20]))
time_bases = st.one_of(st.integers(0, 1 << 62), st.sampled_from(
    [0, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 63) - (1 << 32)]))


# ------------------------------------------------------------------ seeds
def _real_packets(name: str, count: int, cut: int) -> list[bytes]:
    path = os.path.join(SHARED_REAL, name)
    if not os.path.isdir(path):
        return []
    try:
        from edge_vlm.io.bag_reader import iter_event_packets
        out = []
        for i, m in enumerate(iter_event_packets(path)):
            if i >= count:
                break
            out.append(bytes(m.events)[:cut])
        return out
    except Exception:          # seeds are a bonus; synthetic seeds still run
        return []


EVT3_SEEDS = _real_packets("evt3_prophesee_640x480", 6, 2048) + _real_packets(
    "evt3_prophesee_1280x720_trigger", 4, 2048) or [
    struct.pack("<6H", 0x8001, 0x6002, 0x0010, 0x2005, 0x3008, 0x40FF)]
_syn = _events(300, 346, 260, 1, t0_us=0)
CAER_SEEDS = _real_packets("libcaer_cmp_davis346", 6, 2048) + [encode_libcaer_cmp(_syn, 0)]
MONO_SEEDS = [encode_mono(_events(40, 128, 128, 2), 1_000_000)]


def _file_seed(writer, *args, suffix: str = ".bin", **kw) -> bytes:
    p = os.path.join(TMP, "seed" + suffix)
    writer(p, *args, **kw)
    with open(p, "rb") as f:
        return f.read()


_e128 = _events(60, 128, 128, 3)
AEDAT31_SEEDS = [_file_seed(write_aedat31, _e128, packet_size=20)]
AEDAT2_SEEDS = [_file_seed(write_aedat2, _e128),
                _file_seed(write_aedat2, _events(60, 240, 180, 4), camera="DAVIS240")]
RAW_SEEDS = [_file_seed(write_raw_evt2, _events(60, 640, 480, 5), 640, 480)] + [
    _file_seed(write_raw_evt3, s[:512], 640, 480, header_style=h)
    for s, h in zip(EVT3_SEEDS[:2], ("format", "legacy"))]
DAT_SEEDS = [_file_seed(write_dat, _events(60, 304, 240, 6), 304, 240)]
RPG_SEEDS = [_file_seed(write_rpg, _events(30, 240, 180, 7), 240, 180),
             _file_seed(write_rpg, _events(30, 240, 180, 8))]


# ------------------------------------------------------------------ codecs
mono_words = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 300), st.integers(0, 300),
                                st.integers(0, 0xFFFFFFFF)), max_size=16).map(
    lambda evs: struct.pack(f"<{len(evs)}Q", *((p << 63) | (y << 48) | (x << 32) | o
                                               for p, y, x, o in evs)))


@HANG
@FUZZ
@given(data=st.one_of(st.binary(max_size=256), mutated(MONO_SEEDS), mono_words),
       w=sizes, h=sizes, tb=time_bases)
@example(data=MONO_SEEDS[0], w=128, h=128, tb=1 << 63)            # found: OverflowError
@example(data=MONO_SEEDS[0], w=128, h=128, tb=(1 << 63) - 1)      # found: silent int64 wrap
def test_fuzz_mono(data, w, h, tb):
    _run(decode_mono, data, tb, w, h)


@HANG
@FUZZ
@given(packets=st.lists(st.one_of(words16([0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xA, 0xE, 0xF]),
                                  mutated(EVT3_SEEDS), st.binary(max_size=64)),
                        min_size=1, max_size=3),
       w=st.one_of(st.none(), sizes), h=st.one_of(st.none(), sizes))
def test_fuzz_evt3(packets, w, h):
    dec = Evt3Decoder()
    for p in packets:
        _run(dec.decode, p, w, h, 0)


@HANG
@FUZZ
@given(packets=st.lists(st.one_of(words16([0, 1, 2, 3, 4, 5]), mutated(CAER_SEEDS),
                                  st.binary(max_size=64)), min_size=1, max_size=3),
       w=st.one_of(st.none(), sizes), h=st.one_of(st.none(), sizes), tb=time_bases)
@example(packets=[CAER_SEEDS[-1]], w=346, h=260, tb=(1 << 64) - 1)
@example(packets=[struct.pack("<3H", 0x4FF8, 0x50FF, 0x50FF)], w=None, h=None, tb=0)
def test_fuzz_libcaer_cmp(packets, w, h, tb):
    dec = LibcaerCmpDecoder()
    for p in packets:
        _run(dec.decode, p, w, h, tb)


# ------------------------------------------------------------------ file readers
def _via_file(reader, data: bytes, suffix: str, **kw):
    p = os.path.join(TMP, "fuzz" + suffix)
    with open(p, "wb") as f:
        f.write(data)
    return _run(reader, p, **kw)


A31_HDR = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


@HANG
@FUZZ
@given(data=st.one_of(mutated(AEDAT31_SEEDS), st.binary(max_size=200).map(lambda b: A31_HDR + b),
                      st.binary(max_size=64)))
def test_fuzz_aedat31(data):
    _via_file(read_aedat31, data, ".aedat")


A2_HDR = b"#!AER-DAT2.0\r\n"


@HANG
@FUZZ
@given(data=st.one_of(mutated(AEDAT2_SEEDS), st.binary(max_size=200).map(lambda b: A2_HDR + b),
                      st.binary(max_size=64)),
       camera=st.sampled_from([None, "DVS128", "DAVIS240"]),
       orientation=st.sampled_from(["jaer", "raw"]))
def test_fuzz_aedat2(data, camera, orientation):
    _run(decode_aedat2, data, camera=camera, orientation=orientation)


RAW_HDRS = [b"% evt 2.0\n", b"% format EVT2;height=480;width=640\n% end\n",
            b"% evt 3.0\n% geometry 640x480\n", b"% format EVT3;height=720;width=1280\n% end\n",
            b"% format EVT3;height=0;width=99999999999\n", b"% geometry 7x\n% evt 2.1\n"]


@HANG
@FUZZ
@given(data=st.one_of(mutated(RAW_SEEDS),
                      st.tuples(st.sampled_from(RAW_HDRS), st.binary(max_size=200)).map(b"".join),
                      st.tuples(st.sampled_from(RAW_HDRS[2:4]), words16(
                          [0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xA])).map(b"".join),
                      st.binary(max_size=64).map(lambda b: b"%" + b)))
def test_fuzz_prophesee_raw(data):
    _run(decode_raw, data)


@HANG
@FUZZ
@given(data=st.one_of(mutated(DAT_SEEDS),
                      st.binary(max_size=200).map(
                          lambda b: b"% Width 304\n% Height 240\n\x0c\x08" + b),
                      st.binary(max_size=64)))
def test_fuzz_prophesee_dat(data):
    _run(decode_dat, data)


@HANG
@FUZZ
@given(data=st.one_of(mutated(RPG_SEEDS), st.binary(max_size=128),
                      st.text(alphabet="0123456789 .\n-e+naif\t", max_size=200)))
def test_fuzz_rpg(data):
    _run(decode_rpg, data)


@HANG
@FUZZ
@given(data=st.one_of(mutated(AEDAT2_SEEDS + DAT_SEEDS + RAW_SEEDS + RPG_SEEDS + AEDAT31_SEEDS),
                      st.binary(max_size=64)),
       suffix=st.sampled_from([".aedat", ".dat", ".raw", ".txt", ".bin"]))
def test_fuzz_detect_read_events(data, suffix):
    from edge_vlm.io.formats.detect import read_events
    _via_file(read_events, data, suffix)


def _aedat4_seed() -> list[bytes]:
    try:
        from edge_vlm.io.formats.aedat4 import write_aedat4
        return [_file_seed(write_aedat4, _events(50, 40, 30, 9), 40, 30, suffix=".aedat4")]
    except Exception:
        return []


AEDAT4_SEEDS = _aedat4_seed()


@pytest.mark.skipif(not AEDAT4_SEEDS, reason="dv_processing not available")
@HANG
@settings(FUZZ, max_examples=N_AEDAT4, deadline=None)
@given(data=mutated(AEDAT4_SEEDS or [b""]))
def test_fuzz_aedat4(data):
    from edge_vlm.io.formats.aedat4 import read_aedat4
    p = os.path.join(TMP, "fuzz.aedat4")
    with open(p, "wb") as f:
        f.write(data)
    _run(read_aedat4, p, timeout=10)
