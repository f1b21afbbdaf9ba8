"""The torch-free .pth reader: the real EfficientNet-Lite0 file, hand-made legacy files, and refusals."""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from karpalign.vision.efficientnet_lite import default_weights_path
from karpalign.vision.torch_pickle import MAGIC_NUMBER, TorchPickleError, load_torch_state_dict

# ---- a writer for legacy torch files, so the tests control every byte --------------------------------------


class _Global:
    """Pickles as GLOBAL module.name without that module existing (torch is not installed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function is callable; it is never called here
        raise AssertionError("placeholder global called")


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()

    @property
    def type_name(self):
        return {np.float32: "FloatStorage", np.float64: "DoubleStorage", np.int64: "LongStorage"}[
            self.array.dtype.type]


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets us emit arbitrary GLOBALs
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.array.size, None)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Global):
            return obj.name  # a string means "save as a global"
        if isinstance(obj, _Tensor):
            return (_Global("torch._utils", "_rebuild_tensor_v2"),
                    (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()))
        return NotImplemented

    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _legacy_bytes(state, storages, truncate_last=0):
    out = [pickle.dumps(MAGIC_NUMBER, protocol=2), pickle.dumps(1001, protocol=2),
           pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)]
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(state)
    out.append(buf.getvalue())
    out.append(pickle.dumps([s.key for s in storages], protocol=2))
    for s in storages:
        little = s.array.astype(s.array.dtype.newbyteorder("<"))
        out.append(struct.pack("<q", s.array.size) + little.tobytes())
    data = b"".join(out)
    return data[:len(data) - truncate_last]


# ---- tests
# ----------------------------------------------------------------------------------------------------


def test_reads_the_real_efficientnet_lite0_file():
    state = load_torch_state_dict(default_weights_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state["_fc.weight"].shape == (1000, 1280)
    counter = state["_bn0.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == ()
    floats = sum(v.size for v in state.values() if v.dtype == np.float32)
    assert floats == 4_694_024  # weights + batch-norm statistics
    assert (state["_bn0.running_var"] >= 0).all() and np.isfinite(state["_fc.weight"]).all()


def test_strided_views_offsets_and_dtypes(tmp_path):
    shared = _Storage("1", np.arange(12, dtype=np.float32))
    longs = _Storage("2", np.array([7, -3], dtype=np.int64))
    doubles = _Storage("3", np.array([0.5, 1.5, 2.5], dtype=np.float64))
    state = collections.OrderedDict([
        ("matrix", _Tensor(shared, 0, (3, 4), (4, 1))),
        ("transposed", _Tensor(shared, 0, (4, 3), (1, 4))),  # a non-contiguous view of the same storage
        ("tail", _Tensor(shared, 10, (2,), (1,))),
        ("scalar", _Tensor(longs, 1, (), ())),
        ("doubles", _Tensor(doubles, 0, (3,), (1,))),
    ])
    path = tmp_path / "legacy.pth"
    path.write_bytes(_legacy_bytes(state, [shared, longs, doubles]))
    got = load_torch_state_dict(path)
    assert list(got) == ["matrix", "transposed", "tail", "scalar", "doubles"]
    np.testing.assert_array_equal(got["matrix"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(got["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(got["tail"], [10, 11])
    assert got["scalar"] == -3 and got["scalar"].dtype == np.int64
    assert got["doubles"].dtype == np.float64
    got["matrix"][0, 0] = 99  # results are independent, writable copies
    assert got["transposed"][0, 0] == 0


def test_refuses_zip_format_checkpoints(tmp_path):
    path = tmp_path / "new_style.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(TorchPickleError, match=r"new_style\.pth.*zip-format"):
        load_torch_state_dict(path)


def test_refuses_non_torch_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(TorchPickleError, match="not a torch pickle"):
        load_torch_state_dict(text)
    plain = tmp_path / "plain_pickle.pth"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(TorchPickleError, match="magic number|header"):
        load_torch_state_dict(plain)


def test_refuses_arbitrary_globals(tmp_path):
    evil = _Storage("1", np.zeros(1, np.float32))
    state = collections.OrderedDict([("x", _Global("os", "system"))])
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(state, [evil]))
    with pytest.raises(TorchPickleError, match="refusing to unpickle os.system"):
        load_torch_state_dict(path)


def test_truncated_storage_is_an_error(tmp_path):
    storage = _Storage("1", np.arange(8, dtype=np.float32))
    state = collections.OrderedDict([("w", _Tensor(storage, 0, (8,), (1,)))])
    path = tmp_path / "cut.pth"
    path.write_bytes(_legacy_bytes(state, [storage], truncate_last=5))
    with pytest.raises(TorchPickleError, match=r"cut\.pth: storage 1 is truncated"):
        load_torch_state_dict(path)


def test_view_past_end_of_storage_is_an_error(tmp_path):
    storage = _Storage("1", np.arange(4, dtype=np.float32))
    state = collections.OrderedDict([("w", _Tensor(storage, 2, (4,), (1,)))])
    path = tmp_path / "overrun.pth"
    path.write_bytes(_legacy_bytes(state, [storage]))
    with pytest.raises(TorchPickleError, match="tensor w reaches past the end"):
        load_torch_state_dict(path)
