"""The numpy CRC-32C behind Beam's TFRecord writer: exact against a byte-at-a-time reference, and readable by TF."""

import os

import numpy as np
import pytest

from karpalign.beam.crc32c import crc32c, ensure_beam_crc32c


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


def test_beam_writes_tfrecords_that_tensorflow_reads(tmp_path):
    import apache_beam as beam
    import tensorflow as tf

    assert ensure_beam_crc32c()
    records = [os.urandom(n) for n in (0, 3, 700, 5000)]
    with beam.Pipeline() as p:
        _ = (p | beam.Create(records)
             | beam.io.WriteToTFRecord(str(tmp_path / "x"), file_name_suffix=".tfrecord.gz", num_shards=1,
                                       compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    (path,) = tmp_path.glob("x-*.tfrecord.gz")
    read = list(tf.data.TFRecordDataset(str(path), compression_type="GZIP").as_numpy_iterator())
    assert sorted(read) == sorted(records)  # TF verifies every record's checksum while reading
