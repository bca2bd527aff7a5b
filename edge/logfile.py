"""[logging] file: a size-rotated log file for a box without journald.

Under systemd the loop logs to stderr and journald keeps it (board/journald-sonoedge.conf
caps journald's disk use); elsewhere a file that grows without end would fill the card the
journal and the outbox need, so it is rotated at `max_mb` with `backups` old files kept.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from edge.config import ConfigError, LogSettings


def log_to_file(cfg: LogSettings) -> logging.Handler:
    """Add a rotating file handler to the root logger; ConfigError names an unusable file."""
    path = Path(cfg.file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=int(cfg.max_mb * 1e6), backupCount=cfg.backups, encoding="utf-8",
            errors="backslashreplace")  # a path that is not UTF-8 in a line: never lost
    except OSError as exc:
        raise ConfigError(f"logging.file {path}: cannot write it ({exc.strerror or exc})") \
            from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
