from __future__ import annotations

import re


def clean(text: str, *, limit: int = 60_000) -> str:
    text = re.sub(r"<!--.*?(-->|$)", "", text, flags=re.S)
    text = re.sub(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]", "", text)
    text = "".join(ch for ch in text if ch in "\n\t" or ch.isprintable())
    return text[:limit]


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(clean(text).split())[:limit]
