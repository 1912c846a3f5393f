"""H.264/H.265 from MP4's length-prefixed form (avcC/hvcC) to Annex B, as NVDEC takes it.

MP4 and most demuxers give each packet as NAL units with a 1-4 byte length before each, and the
parameter sets (SPS/PPS, and VPS for H.265) once, in the codec's extradata. A hardware decoder
wants the byte stream of Annex B: each NAL unit after a start code, and the parameter sets in
band. ``AnnexB`` converts packets one by one and puts the parameter sets in front of every
keyframe, so a decoder can start (or restart) at any keyframe. Extradata that already is Annex B
(an RTSP camera's, built from the SDP) passes through.
"""

from __future__ import annotations

START_CODE = b"\x00\x00\x00\x01"


class AnnexB:
    """Converts one stream's packets; ``codec`` is ``h264`` or ``hevc``."""

    def __init__(self, codec: str, extradata: bytes | None) -> None:
        if codec not in ("h264", "hevc"):
            raise ValueError(f"Annex B conversion is for h264 and hevc, not {codec!r}")
        data = bytes(extradata or b"")
        if not data or data.startswith(START_CODE) or data.startswith(b"\x00\x00\x01"):
            self.length_size = 0  # packets are Annex B already
            self.parameter_sets = data
        elif codec == "h264":
            self.length_size, nal_units = _parse_avcc(data)
            self.parameter_sets = b"".join(START_CODE + unit for unit in nal_units)
        else:
            self.length_size, nal_units = _parse_hvcc(data)
            self.parameter_sets = b"".join(START_CODE + unit for unit in nal_units)

    def convert(self, payload: bytes, *, keyframe: bool) -> bytes:
        """One packet as Annex B, with the parameter sets first if it is a keyframe."""
        body = payload if self.length_size == 0 else _split(payload, self.length_size)
        return self.parameter_sets + body if keyframe else body


def _split(payload: bytes, length_size: int) -> bytes:
    out = bytearray()
    position = 0
    while position < len(payload):
        if position + length_size > len(payload):
            raise ValueError(f"truncated NAL length at byte {position} of a {len(payload)}-byte packet")
        length = int.from_bytes(payload[position : position + length_size], "big")
        position += length_size
        if length == 0 or position + length > len(payload):
            raise ValueError(f"NAL unit of {length} bytes at byte {position} overruns a {len(payload)}-byte packet")
        out += START_CODE + payload[position : position + length]
        position += length
    return bytes(out)


def _parse_avcc(data: bytes) -> tuple[int, list[bytes]]:
    """avcC: version, profile, compatibility, level, lengthSizeMinusOne, then SPS and PPS lists."""
    if len(data) < 7 or data[0] != 1:
        raise ValueError("H.264 extradata is neither avcC (version 1) nor Annex B")
    length_size = (data[4] & 0x03) + 1
    units: list[bytes] = []
    position = 5
    for count_mask in (0x1F, 0xFF):  # the SPS count shares its byte with reserved bits
        count = data[position] & count_mask
        position = _read_units(data, position + 1, count, units)
    if position > len(data):
        raise ValueError("avcC extradata is truncated")
    return length_size, units


def _parse_hvcc(data: bytes) -> tuple[int, list[bytes]]:
    """hvcC: a 22-byte header (lengthSizeMinusOne in byte 21), then arrays of VPS/SPS/PPS/SEI."""
    if len(data) < 23 or data[0] != 1:
        raise ValueError("H.265 extradata is neither hvcC (version 1) nor Annex B")
    length_size = (data[21] & 0x03) + 1
    units: list[bytes] = []
    position = 23
    for _ in range(data[22]):
        count = int.from_bytes(data[position + 1 : position + 3], "big")
        position = _read_units(data, position + 3, count, units)
    if position > len(data):
        raise ValueError("hvcC extradata is truncated")
    return length_size, units


def _read_units(data: bytes, position: int, count: int, units: list[bytes]) -> int:
    """Append ``count`` NAL units, each after a 2-byte length, from ``position``; return the end."""
    for _ in range(count):
        size = int.from_bytes(data[position : position + 2], "big")
        units.append(data[position + 2 : position + 2 + size])
        position += 2 + size
    return position
