"""The karpalign command-line tools (``karpalign-*``; each is ``karpalign.cli.<name>:main``).

Importing this package, which Python does before any ``karpalign.cli.<name>`` module, keeps the libraries'
start-up chatter out of the tools' output, so a log shows progress and results:

- ``TF_CPP_MIN_LOG_LEVEL`` defaults to ``2`` (TensorFlow's C++ INFO and WARNING lines off, errors kept) unless
  it is set already. It is an environment variable, so subprocesses (the demo's gRPC server, Beam workers)
  inherit it.
- While ``tensorflow`` is first imported, the lines its shared libraries print as they load (``oneDNN custom
  operations are on``, ``Could not find cuda drivers``, absl's ``All log messages before absl::InitializeLog()``
  banner) go through the same level: they are printed before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so
  they are filtered here, on file descriptor 2, and everything else printed meanwhile is passed on. On a
  machine without CUDA drivers the devices are listed once inside that window, so the ``failed call to
  cuInit`` error that follows "Could not find cuda drivers" is dropped with it.
- TensorFlow's Python loggers (``tensorflow``, and ``absl``, which many TF modules log through) stay at
  WARNING, TensorFlow's own default, even when a tool logs at INFO through the root logger (the demo runs
  every tool in one process, so one tool's INFO would otherwise let TF's "Sharding callback duration" and
  saving notes through for all the others).
- While ``apache_beam`` is first imported, its two notices about the optional Google Cloud extras (apitools,
  BigQuery storage) are dropped; they concern only ``ReadFromBigQuery``, which karpalign does not use.

``KARPALIGN_TF_LOGS=1`` turns all of this off: TensorFlow's and Beam's own levels and start-up lines are
kept (README.md, "Logs").
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile

from karpalign.logs import dropped_messages

LOGS_SWITCH = "KARPALIGN_TF_LOGS"
DEFAULT_TF_CPP_MIN_LOG_LEVEL = "2"

# An absl / TensorFlow C++ log line: severity letter, date (or 0000), time, thread id, file:line].
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [0-9:.]+\s+\d+ [^\]\s]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_CUDA_DRIVERS = "Could not find cuda drivers on your machine"
_CUINIT_FAILED = "failed call to cuInit"
# Beam's import-time notices about its optional GCP dependencies (messages as Beam words them).
_BEAM_GCP_NOTICES = ("apitools not found, and bigquery client libraries are not available",
                     "No module named google.cloud.bigquery_storage_v1")


def tf_logs_wanted() -> bool:
    """True when ``KARPALIGN_TF_LOGS`` asks for TensorFlow's (and Beam's) own logging, unfiltered."""
    return os.environ.get(LOGS_SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


def _min_native_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_native_startup(text: str, min_level: int) -> str:
    """The stderr text printed while TensorFlow loads, without the lines ``TF_CPP_MIN_LOG_LEVEL`` hides.

    Drops C++ log lines below ``min_level`` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) with their continuation
    lines, absl's pre-initialisation banner when anything is hidden, and the ``failed call to cuInit`` error
    when TensorFlow said there are no CUDA drivers (the error is that fact again). Other text is kept.
    """
    if min_level <= 0:
        return text
    no_drivers = _NO_CUDA_DRIVERS in text
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        match = _NATIVE_LINE.match(line)
        if match:
            dropping = (_SEVERITY[match.group(1)] < min_level
                        or (no_drivers and match.group(1) == "E" and _CUINIT_FAILED in line))
        elif line.rstrip("\n") == _ABSL_BANNER:
            dropping = True
        elif dropping and line.strip() and not line[:1].isspace() and not line.startswith("To enable"):
            dropping = False  # ordinary output after a hidden entry (continuations are indented or "To enable")
        if not dropping:
            kept.append(line)
    return "".join(kept)


class _FileDescriptor2Filter:
    """Sends file descriptor 2 to a temporary file, then writes back what :func:`filter_native_startup` keeps."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        kept = filter_native_startup(text, _min_native_level())
        if kept:
            os.write(2, kept.encode("utf-8"))
        return False


def _tensorflow_loaded(module) -> None:
    """Inside the stderr filter, right after ``import tensorflow``: list devices (so CUDA's start-up error on a
    machine without drivers lands in the filter), keep TF's Python logger at its default WARNING."""
    try:
        module.config.list_physical_devices()
    except Exception:  # noqa: BLE001 -- device discovery is retried (and reported) by TensorFlow on first use
        pass
    _quiet_tensorflow_python_loggers()


def _quiet_tensorflow_python_loggers() -> None:
    """TensorFlow's Python loggers at WARNING. Only after ``import tensorflow``: absl must create its "absl"
    logger itself (a plain logger made earlier under that name would replace absl's own logger class)."""
    from absl import logging as absl_logging

    absl_logging.get_absl_logger().setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


class _QuietLoader(importlib.abc.Loader):
    """Runs a module's real loader inside a quieting context."""

    def __init__(self, loader, name):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader  # the module keeps its real loader (resources, reloads)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        if self.name == "tensorflow":
            with _FileDescriptor2Filter():
                self.loader.exec_module(module)
                _tensorflow_loaded(module)
            return
        # apache_beam: drop its notices about optional GCP extras while it imports.
        with dropped_messages((logging.getLogger(), logging.getLogger("apache_beam.io.gcp.bigquery")),
                              _BEAM_GCP_NOTICES):
            self.loader.exec_module(module)


class _QuietImports(importlib.abc.MetaPathFinder):
    """Wraps the first import of ``tensorflow`` and ``apache_beam`` in :class:`_QuietLoader`."""

    names = ("tensorflow", "apache_beam")

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader, fullname)
        return spec


def quiet_library_logs() -> None:
    """What importing this package does (see the module doc); a no-op with ``KARPALIGN_TF_LOGS=1``."""
    if tf_logs_wanted():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_CPP_MIN_LOG_LEVEL)
    if "tensorflow" in sys.modules:  # imported before us: its start-up lines are out already
        _quiet_tensorflow_python_loggers()
    if not any(isinstance(f, _QuietImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports())


quiet_library_logs()
