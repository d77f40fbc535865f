"""Secrets kept in the data directory: one JSON file, mode 0600, written atomically.

Values never leave this module except to be handed to an agent's environment; listing
returns names only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

from agentfarm.domain import errors

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_VALUE_BYTES = 65_536


class SecretStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        try:
            raw = self._path.read_text()
        except FileNotFoundError:
            return {}
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise errors.ConfigurationError(f"{self._path} is not a JSON object; fix or remove it")
        return {str(k): str(v) for k, v in data.items()}

    def _save(self, data: dict[str, str]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secrets-", dir=self._path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME_RE.match(name):
            raise errors.InvalidInputError(
                f"{name!r} is not a valid secret name: use letters, digits and _ "
                "(an environment variable name such as CLAUDE_CODE_OAUTH_TOKEN)"
            )

    def set(self, name: str, value: str) -> None:
        self.check_name(name)
        if not value:
            raise errors.InvalidInputError("a secret value may not be empty")
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise errors.InvalidInputError(f"a secret value may be at most {MAX_VALUE_BYTES} bytes")
        with self._lock:
            data = self._load()
            data[name] = value
            self._save(data)

    def delete(self, name: str) -> None:
        with self._lock:
            data = self._load()
            if name not in data:
                raise errors.NotFoundError(
                    f"no secret named {name!r}; `agentfarm secret ls` lists them"
                )
            del data[name]
            self._save(data)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._load())

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._load().get(name)

    def all(self) -> dict[str, str]:
        with self._lock:
            return self._load()
