"""EventPacket payload codecs (pure numpy; never imports rclpy).

* :func:`decode_packet` -- one-shot dispatcher on the EventPacket ``encoding``.
* :func:`make_decoder` -- a decoder object for a stream of packets; its
  ``decode(data, width, height, time_base)`` keeps state across packets
  (required for ``evt3``, whose time/y/x-base state spans packets).
* :func:`make_encoder` -- the encoder ``encode(events, time_base) -> bytes`` of an
  encoding (``mono``, ``libcaer_cmp``), for bag writing and tests.

Every failure is an :class:`edge_vlm.events.EventDecodeError`.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from edge_vlm.events import EventDecodeError
from edge_vlm.io.codecs.evt3 import Evt3Decoder
from edge_vlm.io.codecs.libcaer_cmp import LibcaerCmpDecoder, encode_libcaer_cmp
from edge_vlm.io.codecs.mono import decode_mono, encode_mono

__all__ = ["SUPPORTED_ENCODINGS", "decode_packet", "make_decoder", "PacketDecoder",
           "MonoDecoder", "Evt3Decoder", "LibcaerCmpDecoder", "encode_mono", "decode_mono",
           "PacketEncoder", "ENCODERS", "make_encoder"]

#: EventPacket ``encoding`` strings this package can decode.
SUPPORTED_ENCODINGS: tuple[str, ...] = ("mono", "evt3", "libcaer_cmp")

#: ``encode(events, time_base) -> payload``: events (EVENT_DTYPE) relative to ``time_base`` (ns)
PacketEncoder = Callable[[np.ndarray, int], bytes]
#: the encoder of each EventPacket ``encoding`` this package can write
ENCODERS: dict[str, PacketEncoder] = {"mono": encode_mono, "libcaer_cmp": encode_libcaer_cmp}


class PacketDecoder(Protocol):
    """What :func:`make_decoder` returns."""

    def decode(self, data, width: int, height: int, time_base: int) -> np.ndarray: ...

    def reset(self) -> None: ...


class MonoDecoder:
    """Stateless ``mono`` decoder with the :class:`PacketDecoder` interface."""

    encoding = "mono"

    def decode(self, data, width: int, height: int, time_base: int) -> np.ndarray:
        """Decode one ``mono`` payload (see :func:`decode_mono`)."""
        return decode_mono(data, time_base, width, height)

    def reset(self) -> None:
        """Nothing to reset (mono packets are self-contained)."""


def _unsupported(encoding: str) -> EventDecodeError:
    return EventDecodeError(
        f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")


def make_decoder(encoding: str) -> PacketDecoder:
    """Return a fresh (stateful where needed) decoder for ``encoding``."""
    if encoding == "mono":
        return MonoDecoder()
    if encoding == "evt3":
        return Evt3Decoder()
    if encoding == "libcaer_cmp":
        return LibcaerCmpDecoder()
    raise _unsupported(encoding)


def make_encoder(encoding: str) -> PacketEncoder:
    """The encoder of ``encoding``; ValueError if this package cannot write it."""
    try:
        return ENCODERS[encoding]
    except KeyError:
        raise ValueError(f"no encoder for EventPacket encoding {encoding!r} "
                         f"(supported: {', '.join(ENCODERS)})") from None


def decode_packet(encoding: str, data, width: int, height: int, time_base: int,
                  decoder_state: PacketDecoder | None = None) -> np.ndarray:
    """Decode one EventPacket payload to an :data:`EVENT_DTYPE` array.

    ``decoder_state`` is an object from :func:`make_decoder` carrying stream
    state between packets; without it a fresh decoder is used (fine for
    ``mono``; for ``evt3`` the packet must then start with its own time words).
    """
    if encoding not in SUPPORTED_ENCODINGS:
        raise _unsupported(encoding)
    dec = decoder_state if decoder_state is not None else make_decoder(encoding)
    if getattr(dec, "encoding", encoding) != encoding:
        raise EventDecodeError(
            f"decoder_state is for {getattr(dec, 'encoding')!r}, packet is {encoding!r}")
    return dec.decode(data, width, height, time_base)
