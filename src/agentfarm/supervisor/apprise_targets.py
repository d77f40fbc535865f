"""Apprise URLs as notification targets: what may be shown of one, and sending to it.

An Apprise URL is a credential: Slack's and Discord's carry their webhook tokens in the path,
Telegram's its bot token as the "host", ntfy's its topic. So a target is shown as its scheme
and, only where the host is a real host name (it has a dot, or is an address or
``localhost``), that host; and whatever Apprise says about a send is masked of every other
part of the URL before it reaches a log or a response. Apprise's and urllib3's loggers name
URLs (at debug level): while a URL is being sent to, a filter on them masks it in every record.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

#: Parts of a URL shorter than this are not masked in Apprise's messages (they would mask
#: ordinary words; nothing that short is a token).
MIN_MASKED = 3
_SPLIT = re.compile(r"[,\s]+")
_MASK = "[redacted]"


def split_urls(text: str | None) -> list[str]:
    """Apprise URLs from a setting or a secret: comma- or whitespace-separated."""
    return [item for item in _SPLIT.split(text or "") if item]


def _shown_host(host: str | None) -> str | None:
    if not host:
        return None
    if host == "localhost" or "." in host:
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


@dataclass(frozen=True)
class Target:
    """One Apprise URL and where it came from (the setting, or a secret's name)."""

    url: str
    source: str

    @property
    def scheme(self) -> str:
        scheme, sep, _ = self.url.partition("://")
        return scheme.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else "?"

    def _parts(self) -> tuple[str | None, list[str]]:
        """The host worth showing, and every other piece of the URL (to be masked)."""
        try:
            split = urlsplit(self.url)
            host = split.hostname
        except ValueError:
            return None, [self.url]
        shown = _shown_host(host)
        rest = self.url.partition("://")[2]
        pieces = [self.url, rest]
        if host and host != shown:
            pieces.append(host)
        for piece in (split.username, split.password):
            if piece:
                pieces += [piece, unquote(piece)]
        for segment in split.path.split("/"):
            pieces += [segment, unquote(segment)]
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            pieces += [key, value]
        if split.fragment:
            pieces.append(split.fragment)
        # A host that is not a real host name (a bot token, a topic) is a secret too.
        netloc = split.netloc.rpartition("@")[2]
        if shown is None and netloc:
            pieces.append(netloc)
        return shown, [p for p in pieces if len(p) >= MIN_MASKED]

    @property
    def shown(self) -> str:
        """What may be shown of this target: ``scheme://host`` or ``scheme://``."""
        host, _ = self._parts()
        return f"{self.scheme}://{host or ''}"

    def mask(self, text: str) -> str:
        """``text`` with every part of this URL but its scheme and shown host masked."""
        host, pieces = self._parts()
        for piece in sorted(set(pieces), key=len, reverse=True):
            if piece in (host, self.scheme):
                continue
            text = text.replace(piece, _MASK)
        return text


@dataclass(frozen=True)
class Outcome:
    """How a send to one target went, in words fit for a log and a page."""

    target: str
    ok: bool
    detail: str = ""


class _Masking(logging.Filter):
    """Masks the URLs being sent to in every record of the loggers it sits on (Apprise's, and
    urllib3's, whose debug lines name request paths), before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._active: dict[int, Target] = {}
        self._next = 0

    @contextlib.contextmanager
    def sending(self, target: Target) -> Iterator[None]:
        with self._lock:
            key = self._next = self._next + 1
            self._active[key] = target
        try:
            yield
        finally:
            with self._lock:
                del self._active[key]

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            targets = list(self._active.values())
        if targets:
            text = record.getMessage()
            for target in targets:
                text = target.mask(text)
            record.msg, record.args = text, None
        return True


MASKING = _Masking()
MASKED_LOGGERS = ("apprise", "urllib3.connectionpool")


def install_masking() -> None:
    """Put the URL mask on the loggers of Apprise and of the HTTP library under it."""
    for name in MASKED_LOGGERS:
        logger = logging.getLogger(name)
        if MASKING not in logger.filters:
            logger.addFilter(MASKING)


NOTIFY_TYPES = {"success": "success", "failure": "failure", "warning": "warning", "info": "info"}


def _notify(
    url: str, title: str, body: str, level: str, timeout: float, collect: Any
) -> bool | None:
    """One Apprise send: True sent, False not, None not a URL Apprise knows."""
    import apprise  # lazily: it loads a plugin per service

    apobj = apprise.Apprise()
    if not apobj.add(url):
        return None
    result = apobj.notify(
        body=body,
        title=title,
        notify_type=NOTIFY_TYPES.get(level, "info"),
        timeout=timeout,
        log_callback=collect,
    )
    return bool(result)


def send(target: Target, title: str, body: str, level: str, timeout: float) -> Outcome:
    """Send one message to one target; blocking (called in a worker thread). Never raises."""
    entries: list[str] = []

    def collect(entry: Any, _service: Any) -> None:
        if str(getattr(entry, "level", "")).upper() in ("WARNING", "ERROR", "CRITICAL"):
            entries.append(str(getattr(entry, "message", "")))

    shown = target.shown
    try:
        with MASKING.sending(target):
            ok = _notify(target.url, title, body, level, timeout, collect)
    except Exception as exc:  # an Apprise plugin's own error: the message may quote the URL
        entries.append(f"{type(exc).__name__}: {exc}")
        ok = False
    if ok is None:
        return Outcome(shown, False, "not a URL Apprise knows: check its scheme and form "
                       "(https://github.com/caronc/apprise/wiki)")  # fmt: skip
    if ok:
        return Outcome(shown, True, "sent")
    why = target.mask(entries[-1]) if entries else "the service did not accept it"
    return Outcome(shown, False, why[:300])
