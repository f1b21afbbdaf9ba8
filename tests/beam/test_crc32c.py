"""CRC-32C and the job's TFRecord framing: exact against a byte-at-a-time reference, and readable by TF."""

import os

import numpy as np
import pytest

from karpalign.beam import crc32c as C
from karpalign.beam.crc32c import crc32c


def _reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value
    assert crc32c(b"") == 0


@pytest.mark.parametrize("n", [1, 15, 16, 17, 511, 512, 513, 1000, 4096, 4099, 20011])
def test_matches_the_bitwise_reference(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == _reference(data)
    assert crc32c(b"\0" * n) == _reference(b"\0" * n)  # leading-zero padding must not leak into the result


@pytest.mark.parametrize("native", [True, False])
def test_framed_records_are_read_and_verified_by_tensorflow(tmp_path, monkeypatch, native):
    import gzip

    import tensorflow as tf

    if not native:  # the numpy CRC, as on a machine without google-crc32c
        monkeypatch.setattr(C, "fast_crc32c", lambda: crc32c)
    records = [os.urandom(n) for n in (0, 3, 700, 5000)]
    path = tmp_path / "x.tfrecord.gz"
    with gzip.open(path, "wb") as f:
        for r in records:
            f.write(C.tfrecord_frame(r))
    read = list(tf.data.TFRecordDataset(str(path), compression_type="GZIP").as_numpy_iterator())
    assert read == records  # TF verifies every record's checksums while reading

    corrupt = bytearray(C.tfrecord_frame(b"payload"))
    corrupt[-1] ^= 1  # a wrong data checksum must be caught
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(bad)).as_numpy_iterator())
