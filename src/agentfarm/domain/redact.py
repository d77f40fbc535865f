"""Masking secret values wherever they might surface (event data, error sentences, logs)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

#: Shorter values are not masked: they would match everywhere and are not credentials.
MIN_SECRET_LENGTH = 8


class Redactor:
    """Replaces each known secret value with ``[redacted:NAME]``."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        pairs: dict[str, str] = {}
        for name, value in (secrets or {}).items():
            if len(value) < MIN_SECRET_LENGTH:
                continue
            # The value as it stands in JSON text too (an agent's stream-json line, JSON a tool
            # printed): quotes, backslashes and control characters come escaped there.
            for form in (value, *_json_forms(value)):
                pairs.setdefault(form, f"[redacted:{name}]")
        # Longest first, so a secret containing another is masked whole.
        self._pairs = sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)
        self._raw = [(secret.encode(), mask.encode()) for secret, mask in self._pairs]

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

    def raw(self, line: bytes) -> bytes:
        """``line`` as the agent printed it, with every secret masked: done before a line is
        parsed, so that no later cut (a size cap) can leave part of a secret behind. The mask
        has no character that JSON escapes, so a JSON line stays valid JSON."""
        for secret, mask in self._raw:
            if secret in line:
                line = line.replace(secret, mask)
        return line

    def found_in(self, text: str) -> bool:
        """Whether any secret, in any of its forms, occurs in ``text``. On JSON text this says
        whether ``data`` would mask anything in the value it encodes: JSON escapes a string
        character by character, so a secret inside any string (or key) stands in the text in
        one of the escaped forms kept here. It may say yes for nothing (a secret's digits in a
        number), never no for a secret."""
        return any(secret in text for secret, _ in self._pairs)

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


def _json_forms(value: str) -> set[str]:
    """How ``value`` reads inside a JSON string, escaped once and twice (JSON in JSON), with
    non-ASCII characters as they are and as ``\\u`` escapes; without the value itself."""
    forms: set[str] = set()
    for ascii_only in (True, False):
        once = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        forms |= {once, json.dumps(once, ensure_ascii=ascii_only)[1:-1]}
    forms.discard(value)
    return forms
