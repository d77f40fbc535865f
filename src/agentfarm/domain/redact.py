"""Masking secret values wherever they might surface (event data, error sentences, logs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Shorter values are not masked: they would match everywhere and are not credentials.
MIN_SECRET_LENGTH = 8


class Redactor:
    """Replaces each known secret value with ``[redacted:NAME]``."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        pairs = [
            (value, f"[redacted:{name}]")
            for name, value in (secrets or {}).items()
            if len(value) >= MIN_SECRET_LENGTH
        ]
        # Longest first, so a secret containing another is masked whole.
        self._pairs = sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)

    @classmethod
    def of(cls, *mappings: Mapping[str, str]) -> Redactor:
        merged: dict[str, str] = {}
        for mapping in mappings:
            merged.update(mapping)
        return cls(merged)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, value: str) -> str:
        for secret, mask in self._pairs:
            if secret in value:
                value = value.replace(secret, mask)
        return value

    def data(self, value: Any) -> Any:
        """A deep copy of JSON-like ``value`` with every secret masked (keys included)."""
        if not self._pairs:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def values(self) -> Iterable[str]:
        return (secret for secret, _ in self._pairs)
