"""The on-disk reply cache: `ResponseCache` (SQLite, WAL; safe across threads and processes).

This module imports only the standard library at load time (a test loads it alone in
subprocesses, without the package).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ResponseCache", "default_cache_path", "make_cache"]


def default_cache_path() -> Path:
    """``$WORKBENCH_CACHE/llm/responses.sqlite`` (default root ``~/.cache/interp-workbench``)."""
    from ..core.loading import cache_root

    return cache_root() / "llm" / "responses.sqlite"


class ResponseCache:
    """Chat replies on disk in SQLite (WAL), keyed by a SHA-256 of the request; thread- and process-safe.

    A path ending in ``.sqlite``/``.db`` is the file; any other path is a folder holding
    ``responses.sqlite``. Only the reply and its token counts are stored, never credentials.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        p = Path(path) if path is not None else default_cache_path()
        if p.suffix not in (".sqlite", ".db", ".sqlite3"):
            p = p / "responses.sqlite"
        self.path = p
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: no corruption, fewer fsyncs
            with self._init_lock:
                if not self._ready:
                    try:
                        conn.execute("PRAGMA journal_mode=WAL")
                    except sqlite3.OperationalError:  # pragma: no cover - e.g. a network file system
                        pass
                    conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, "
                                 "value TEXT NOT NULL, created REAL NOT NULL)")
                    self._ready = True
            self._local.conn = conn
        return conn

    @staticmethod
    def key(kind: str, model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float, seed: int | None,
            stop: Sequence[str]) -> str:
        """The cache key of a request: a SHA-256 over every component that changes the reply."""
        payload = json.dumps([kind, model, messages, int(max_tokens), float(temperature), seed, list(stop)],
                             sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply for ``key``, or None (a damaged entry is a miss)."""
        try:
            row = self._conn().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            # imported here, not at the top: this module loads without the package
            from .errors import LLMError

            raise LLMError(f"the response cache {self.path} cannot be read ({exc}): delete it or pass "
                           "cache=None") from None
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None  # a damaged entry is a miss; the next put replaces it
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store (or replace) the reply for ``key``, retrying briefly while another writer holds the lock."""
        data = json.dumps(value, ensure_ascii=False)
        for attempt in range(5):
            try:
                self._conn().execute("INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                                     (key, data, time.time()))
                return
            except sqlite3.OperationalError:  # "database is locked" beyond busy_timeout: try again
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def clear(self) -> None:
        """Delete every stored reply."""
        self._conn().execute("DELETE FROM responses")


def make_cache(cache: Any) -> ResponseCache | None:
    """A client's ``cache=`` argument as a cache: True (default location), None/False (off), a path or a cache."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return ResponseCache()
    if isinstance(cache, ResponseCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return ResponseCache(cache)
    raise TypeError(f"cache must be True (default location), None/False (off), a path or a ResponseCache, "
                    f"not {type(cache).__name__}")

