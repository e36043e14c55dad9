"""The persistent configuration cache: one JSON file under TRITONCONV_CACHE_DIR (default
~/.cache/tritonconv), shared by every process and thread that tunes.

Writes are atomic and merging: a writer takes an exclusive lock on a sibling lock file, re-reads the
file, adds its entry and replaces the file with `os.replace`, so concurrent writers never lose each
other's entries and readers never see a half-written file. A corrupt file, or one written by another
format version, is reported once as a warning and rebuilt from empty; it never raises.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

FORMAT_VERSION = 1
FILE_NAME = "configs.json"


def cache_dir() -> Path:
    """The cache folder: $TRITONCONV_CACHE_DIR, else ~/.cache/tritonconv."""
    return Path(os.environ.get("TRITONCONV_CACHE_DIR") or Path.home() / ".cache" / "tritonconv")


class ConfigCache:
    """Key -> entry (a JSON object) store backed by `cache_dir()/configs.json`, read once per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict] | None = None
        self._path: Path | None = None
        self._warned = False

    @property
    def path(self) -> Path:
        return cache_dir() / FILE_NAME

    def _read(self) -> dict[str, dict]:
        """The entries on disk; {} (with one warning) when the file is missing, corrupt or foreign."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            self._warn(f"cannot read tritonconv's config cache {self.path} ({err}); rebuilding it")
            return {}
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
            self._warn(f"tritonconv's config cache {self.path} has another format version; rebuilding it")
            return {}
        return data["entries"]

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def entries(self) -> dict[str, dict]:
        """Every entry, loaded from disk on first use (or after the cache folder changed)."""
        with self._lock:
            if self._entries is None or self._path != self.path:
                self._path = self.path
                self._entries = self._read()
            return self._entries

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    def put(self, key: str, entry: dict) -> None:
        """Add one entry, merging with whatever other processes wrote meanwhile."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            entries[key] = entry
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".configs-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": FORMAT_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
            self._entries, self._path = entries, path

    def clear(self) -> None:
        """Remove the cache file and forget every entry."""
        with self._lock:
            self.path.unlink(missing_ok=True)
            self._entries = None
