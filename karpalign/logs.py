"""Dropping library log messages that say nothing a karpalign user can act on (while a noisy call runs).

Used by the command-line package (Beam's import-time notices about its optional GCP extras) and by the
SavedModel writer (TensorFlow's capture-renaming notes while saving); anything else on those loggers passes.
"""

from __future__ import annotations

import contextlib
import logging


class DropMessages(logging.Filter):
    """Refuses records whose message contains any of ``fragments``."""

    def __init__(self, fragments):
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record):
        return not any(fragment in str(record.msg) for fragment in self.fragments)


@contextlib.contextmanager
def dropped_messages(loggers, fragments):
    """Inside the block, ``loggers`` drop the records that contain one of ``fragments``."""
    message_filter = DropMessages(fragments)
    for logger in loggers:
        logger.addFilter(message_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(message_filter)
