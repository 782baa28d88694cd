"""Per-thread state of the master side."""

from __future__ import annotations

import threading
from typing import Any


class _CQRSState(threading.local):
    """Thread-local holder; every thread starts with ``bulk_relate_cm = None``."""

    bulk_relate_cm: Any = None
    """The innermost active ``bulk_relate_cqrs_serialization()`` block of this thread, or None."""


cqrs_state = _CQRSState()
"""A ``threading.local()``; ``cqrs_state.bulk_relate_cm`` is the thread's active
``bulk_relate_cqrs_serialization`` block, if any."""
