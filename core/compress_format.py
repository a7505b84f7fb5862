"""The file format of core/compress.py (version 1, little-endian), written and read without a model:
    magic b"GLPX", version u8,
    model fingerprint 8 bytes (SHA-256 of the weights, config and precision: decoding with another model is refused),
    image side u8, classes K u16 (0: unconditional), image count u32, batch size u16, threads u16,
    image checksum 8 bytes (SHA-256 of the uint8 levels),
    model name, device type, torch version, each file name: u16 length + UTF-8,
    coded words: u32 count + the range coder's u32 words,
    CRC-32 of everything before, u32.
A file is untrusted input: every length is checked against the bytes there are, names must be plain file names.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

MAGIC, VERSION = b"GLPX", 1
HASH_BYTES = 8
MAX_NAME_BYTES = 255


class CompressedFileError(ValueError):
    """A compressed file that is not ours, is corrupted or truncated, or was made with another model."""


def check_name(name) -> str:
    """A plain file name: no path separators, no '.' or '..', no control characters, at most 255 UTF-8 bytes."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"file name {name!r}: must be a non-empty string")
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"file name {name!r}: must be a plain file name (no path separators, '.', '..' or "
                         f"control characters)")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"file name {name[:40]!r}…: longer than {MAX_NAME_BYTES} bytes")
    return name


FIXED = struct.Struct(f"<4sB{HASH_BYTES}sBHIHH{HASH_BYTES}s")


def pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= 2 ** 16:
        raise ValueError(f"{text[:40]!r}…: too long for the header")
    return struct.pack("<H", len(raw)) + raw


def pack(header: dict, words: np.ndarray) -> bytes:
    parts = [FIXED.pack(MAGIC, VERSION, header["fingerprint"], header["side"], header["classes"], header["count"],
                        header["batch_size"], header["threads"], header["checksum"])]
    parts += [pack_string(header[key]) for key in ("model", "device", "torch")]
    parts += [pack_string(name) for name in header["names"]]
    parts += [struct.pack("<I", len(words)), words.tobytes()]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


class Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise CompressedFileError("the file is truncated")
        self.at += n
        return self.data[self.at - n:self.at]

    def string(self) -> str:
        (n,) = struct.unpack("<H", self.take(2))
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise CompressedFileError("the header holds a string that is not UTF-8") from None


def unpack(data: bytes) -> tuple[dict, np.ndarray]:
    """The header (dict) and the coded words of a file, after checking its magic, version and CRC-32."""
    data = bytes(data)
    if len(data) < len(MAGIC) + 1 or data[:len(MAGIC)] != MAGIC:
        raise CompressedFileError(f"not a genlab compressed file (it does not start with {MAGIC!r})")
    if data[len(MAGIC)] != VERSION:
        raise CompressedFileError(f"format version {data[len(MAGIC)]}, this genlab reads version {VERSION}")
    if len(data) < FIXED.size + 4 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise CompressedFileError("the file is corrupted or truncated (its CRC-32 does not match)")
    reader = Reader(data[:-4])
    _, _, fingerprint, side, k, count, batch_size, threads, checksum = FIXED.unpack(reader.take(FIXED.size))
    header = {"fingerprint": fingerprint, "side": side, "classes": k, "count": count, "batch_size": batch_size,
              "threads": threads, "checksum": checksum}
    for key in ("model", "device", "torch"):
        header[key] = reader.string()
    if not count or not batch_size or not threads:
        raise CompressedFileError("the header's image count, batch size or thread count is 0")
    if count > len(data):                          # each name takes at least 3 bytes: a forged count
        raise CompressedFileError("the header's image count exceeds the file")
    try:
        header["names"] = [check_name(reader.string()) for _ in range(count)]
    except CompressedFileError:
        raise
    except ValueError as exc:
        raise CompressedFileError(f"the file holds an unsafe name: {exc}") from None
    if len(set(header["names"])) != count:
        raise CompressedFileError("the file holds the same name twice")
    (n_words,) = struct.unpack("<I", reader.take(4))
    words = np.frombuffer(reader.take(4 * n_words), dtype="<u4")
    if reader.at != len(reader.data):
        raise CompressedFileError("the file has trailing bytes after its coded words")
    return header, words


def read_header(data: bytes) -> dict:
    """The header of a compressed file (model name, fingerprint, names, ...), without decoding it."""
    return unpack(data)[0]
