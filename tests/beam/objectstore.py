"""A Beam filesystem for tests: ``kobj://`` objects kept as flat files in one local folder, with an object
store's rules (no directories, a "folder" is a key prefix, a missing object is an error to open, deleting a
prefix needs the trailing "/"), so the job's remote-storage route runs here the way it runs on ``gs://``.

The folder is ``$KARPALIGN_TEST_OBJECT_STORE``; every process that touches ``kobj://`` paths needs that variable
and must import this module (the extraction job's I/O steps import it on the workers: it is a filesystem
plugin, ``tests.beam.objectstore``, found from the launcher's paths).
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.parse
import uuid

from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem)

SCHEME = "kobj"
ENV = "KARPALIGN_TEST_OBJECT_STORE"
_PREFIX = SCHEME + "://"


def root() -> str:
    folder = os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"{ENV} is not set in this process (pid {os.getpid()}): the kobj:// store has no folder")
    return folder


def _file(path: str) -> str:
    """``kobj://bucket/key`` -> its flat file in the store folder."""
    if not path.startswith(_PREFIX):
        raise ValueError(f"not a {_PREFIX} path: {path!r}")
    return os.path.join(root(), urllib.parse.quote(path[len(_PREFIX):], safe=""))


def _key(filename: str) -> str:
    return _PREFIX + urllib.parse.unquote(filename)


def put(path: str, data: bytes) -> None:
    """Uploads ``data`` as the object ``path`` (test set-up)."""
    with open(_file(path), "wb") as f:
        f.write(data)


def get(path: str) -> bytes:
    with open(_file(path), "rb") as f:
        return f.read()


def keys(prefix: str = _PREFIX) -> list[str]:
    """Every object whose path starts with ``prefix``, sorted."""
    return sorted(k for k in (_key(n) for n in os.listdir(root()) if not n.startswith(".")) if k.startswith(prefix))


class _Upload(io.FileIO):
    """A new object: written to a hidden file, visible under its key only once closed (like an upload)."""

    def __init__(self, dest: str):
        self._dest = dest
        self._tmp = os.path.join(root(), f".upload-{uuid.uuid4().hex}")
        super().__init__(self._tmp, "wb")

    def close(self):
        if not self.closed:
            super().close()
            os.replace(self._tmp, self._dest)


class ObjectStoreFileSystem(FileSystem):
    """``kobj://`` (see the module docstring)."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        if not basepath.startswith(_PREFIX):
            raise ValueError(f"not a {_PREFIX} path: {basepath!r}")
        path = basepath
        for p in paths:
            path = path.rstrip("/") + "/" + p.strip("/")
        return path

    def split(self, path):
        if not path.startswith(_PREFIX):
            raise ValueError(f"not a {_PREFIX} path: {path!r}")
        head, _, tail = path.rstrip("/").rpartition("/")
        return (head if len(head) > len(_PREFIX) else path.rstrip("/")), tail

    def mkdirs(self, path):
        pass  # object stores have no directories

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for key in keys(dir_or_prefix):
            st = os.stat(_file(key))
            yield FileMetadata(key, st.st_size, st.st_mtime)

    def _open(self, raw, path, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(_Upload(_file(path)), path, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        try:
            raw = io.open(_file(path), "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"No such object: {path}") from None
        return self._open(raw, path, compression_type)

    def copy(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            try:
                with open(_file(src), "rb") as s, _Upload(_file(dst)) as d:
                    shutil.copyfileobj(s, d)
            except OSError as exc:
                errors[(src, dst)] = exc
        if errors:
            raise BeamIOError("Copy operation failed", errors)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)  # as gs:// does: copy, then delete
        self.delete(source_file_names)

    def exists(self, path):
        return os.path.isfile(_file(path))

    def size(self, path):
        return os.path.getsize(_file(path))

    def last_updated(self, path):
        return os.path.getmtime(_file(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        try:
            st = os.stat(_file(path))
        except FileNotFoundError:
            raise BeamIOError("Metadata operation failed", {path: FileNotFoundError(path)}) from None
        return FileMetadata(path, st.st_size, st.st_mtime)

    def delete(self, paths):
        for path in paths:
            targets = keys(path) if path.endswith("/") else [path]
            for key in targets:  # like gs://: a path without "/" names one object (deleting none is no error)
                try:
                    os.remove(_file(key))
                except FileNotFoundError:
                    pass

    def report_lineage(self, path, unused_lineage):
        pass
