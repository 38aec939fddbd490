"""Named crash points for fault-injection tests, in the manner of etcd's gofail.

Inert unless the environment variable OMS_FAILPOINTS lists the point's name (comma-separated):
then reaching it kills the process with SIGKILL, as a power cut would, at exactly that moment.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "OMS_FAILPOINTS"
_ENABLED = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())

log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    if name in _ENABLED:
        log.warning("failpoint %s reached: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
