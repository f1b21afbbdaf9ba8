"""Reads legacy (pre-1.6, non-zip) PyTorch ``state_dict`` pickles into numpy arrays, without importing torch.

Why: the ImageNet weights for the built-in EfficientNet-Lite0 ship as a ``.pth`` file, and we do not want
torch (a very large dependency) in the environment just to read ~18 MB of floats.

The legacy file is a concatenation of pickles followed by raw storage bytes::

    pickle(MAGIC_NUMBER)  pickle(PROTOCOL_VERSION)  pickle(sys_info)
    pickle(state_dict)        # tensors refer to storages through persistent ids
    pickle([storage keys])    # the order in which the raw storages follow
    for each key: int64 element count, then count * element_size raw bytes (little endian)

A persistent id is ``('storage', storage_type, key, location, size[, view_metadata])`` and a tensor is
rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``.
While the state dict is unpickled the storage bytes have not been read yet, so the unpickler builds small
placeholder records; they are turned into numpy arrays once every storage has been read.

The unpickler is restricted: ``find_class`` only resolves the handful of names a state dict needs, so a
malicious file cannot run code through ``pickle``.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
SUPPORTED_PROTOCOL_VERSION = 1001

# torch storage class name -> numpy dtype of one element (little endian, as written by torch on x86/arm).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
    """A ``.pth`` file this reader cannot (or will not) read; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. while unpickling: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass
class _StorageRef:
    """A storage named by a persistent id; ``data`` is filled in after the storage bytes are read."""

    key: str
    dtype: np.dtype
    size: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _TensorRef:
    """A tensor waiting for its storage bytes: a strided view ``(offset, size, stride)`` into ``storage``."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _StorageRef):
        raise TorchPickleError(f"tensor refers to {type(storage).__name__}, expected a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    return _TensorRef(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data  # an nn.Parameter is just its tensor for our purposes


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict, resolving only OrderedDict, tensor rebuilders and storage types."""

    def __init__(self, file: BinaryIO, path: str):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise TorchPickleError(
            f"{self._path}: refusing to unpickle {module}.{name}; only plain state dicts of tensors are "
            "supported")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchPickleError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, size = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise TorchPickleError(f"{self._path}: storage views (view_metadata) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"{self._path}: persistent id names unknown storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(size))
        return self.storages[key]


class _NoGlobalsUnpickler(pickle.Unpickler):
    """For the header pickles (magic number, protocol, sys_info): plain Python values only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} not allowed in a torch file header")


def _check_header(f: BinaryIO, path: str) -> None:
    start = f.read(4)
    if start[:2] == b"PK":
        raise TorchPickleError(
            f"{path}: this is a zip-format torch checkpoint (torch >= 1.6); only the legacy non-zip format "
            "is supported (re-save it with torch.save(..., _use_new_zipfile_serialization=False))")
    if not start or start[:1] != b"\x80":
        raise TorchPickleError(f"{path}: not a torch pickle file (does not start with a pickle header)")
    f.seek(0)
    try:
        magic = _NoGlobalsUnpickler(f).load()
        protocol = _NoGlobalsUnpickler(f).load()
        sys_info = _NoGlobalsUnpickler(f).load()
    except Exception as exc:  # any failure here means the header is not what torch writes
        raise TorchPickleError(f"{path}: unreadable torch file header ({exc})") from exc
    if magic != MAGIC_NUMBER:
        raise TorchPickleError(f"{path}: wrong magic number {magic!r}; not a legacy torch.save file")
    if protocol != SUPPORTED_PROTOCOL_VERSION:
        raise TorchPickleError(f"{path}: unsupported torch protocol version {protocol!r}")
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise TorchPickleError(f"{path}: only little-endian torch files are supported "
                               f"(sys_info={sys_info!r})")


def _read_storages(f: BinaryIO, path: str, storages: dict[str, _StorageRef]) -> None:
    keys = _NoGlobalsUnpickler(f).load()
    if not isinstance(keys, list):
        raise TorchPickleError(f"{path}: storage key list is a {type(keys).__name__}, expected a list")
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchPickleError(f"{path}: storage {key} is stored but not used by any tensor")
        ref = storages[key]
        count_bytes = f.read(8)
        if len(count_bytes) != 8:
            raise TorchPickleError(f"{path}: file ends before storage {key}")
        (count,) = struct.unpack("<q", count_bytes)
        if count != ref.size:
            raise TorchPickleError(f"{path}: storage {key} holds {count} elements, the pickle said "
                                   f"{ref.size}")
        nbytes = count * ref.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchPickleError(f"{path}: storage {key} is truncated ({len(raw)} of {nbytes} bytes)")
        ref.data = np.frombuffer(raw, dtype=ref.dtype)
    missing = [k for k, ref in storages.items() if ref.data is None]
    if missing:
        raise TorchPickleError(f"{path}: storages {missing[:5]} are used by tensors but missing from the "
                               "file")


def _materialise(tensor: _TensorRef, path: str, name: str) -> np.ndarray:
    data = tensor.storage.data
    itemsize = data.dtype.itemsize
    if len(tensor.size) != len(tensor.stride) or any(s < 0 for s in tensor.stride):
        raise TorchPickleError(f"{path}: tensor {name} has invalid strides {tensor.stride} for size "
                               f"{tensor.size}")
    if any(n == 0 for n in tensor.size):
        return np.zeros(tensor.size, dtype=data.dtype.newbyteorder("="))
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if tensor.offset < 0 or last >= data.size:
        raise TorchPickleError(f"{path}: tensor {name} reaches past the end of storage {tensor.storage.key}")
    view = np.lib.stride_tricks.as_strided(
        data[tensor.offset:], shape=tensor.size, strides=tuple(s * itemsize for s in tensor.stride),
        writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="), copy=True)


def load_torch_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Reads a legacy ``torch.save`` state dict file -> OrderedDict name -> numpy array (native byte order).

    Raises :class:`TorchPickleError` naming the file for anything that is not a legacy little-endian state
    dict of tensors (zip-format checkpoints, other pickles, truncated files, unknown classes).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        _check_header(f, path)
        unpickler = _RestrictedUnpickler(f, path)
        try:
            state = unpickler.load()
        except TorchPickleError:
            raise
        except Exception as exc:
            raise TorchPickleError(f"{path}: cannot unpickle the state dict ({exc})") from exc
        if not isinstance(state, dict):
            raise TorchPickleError(f"{path}: top-level object is a {type(state).__name__}, expected a "
                                   "state dict")
        _read_storages(f, path, unpickler.storages)
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise TorchPickleError(f"{path}: entry {name!r} is a {type(value).__name__}, expected a tensor")
        out[name] = _materialise(value, path, name)
    return out
