"""Branch names the pipeline makes and the only ones it accepts.

``agentfarm/issue-<number>-<slug>``; a name once used is never used again, the next attempt
gets ``-2``, ``-3``, ... :func:`valid_branch` is git's ``check-ref-format --branch`` with a
length limit and without control or invisible characters; anything else is refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

PREFIX = "agentfarm/"
MAX_SLUG = 40
MAX_BRANCH = 200
#: More taken names than this for one issue means something is wrong (`taken` always True).
MAX_SUFFIX = 10_000

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_FORBIDDEN = re.compile(r"\.\.|@\{|//|[\x00-\x20\x7f~^:?*\[\\]")


def slug(title: str) -> str:
    """Lower-case ASCII words joined by dashes, at most 40 characters; ``change`` when the
    title has none."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = _NOT_SLUG.sub("-", ascii_title.lower()).strip("-")
    return words[:MAX_SLUG].rstrip("-") or "change"


def issue_branch(number: int, title: str, taken: Callable[[str], bool]) -> str:
    """The branch for a new attempt at issue ``number``: the first of
    ``agentfarm/issue-<n>-<slug>``, ``...-2``, ``...-3`` for which ``taken`` is False."""
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"{number!r} is not an issue number")
    base = f"{PREFIX}issue-{number}-{slug(title)}"
    for n in range(1, MAX_SUFFIX + 1):
        name = base if n == 1 else f"{base}-{n}"
        if not taken(name):
            if not valid_branch(name):  # pragma: no cover - slug() makes valid names
                raise ValueError(f"made an invalid branch name {name!r}")
            return name
    raise ValueError(
        f"every branch name from {base} to {base}-{MAX_SUFFIX} is taken: delete old "
        "agentfarm branches of this issue from the repository, or check the branch lookup"
    )


def valid_branch(name: str) -> bool:
    """Whether ``name`` is a branch name git accepts (``git check-ref-format --branch``) and
    the pipeline is willing to use: printable, at most 200 characters, not ``HEAD``."""
    if not name or len(name) > MAX_BRANCH or name in {"@", "HEAD"}:
        return False
    if name.startswith(("-", "/")) or name.endswith(("/", ".")) or _FORBIDDEN.search(name):
        return False
    if not name.isprintable():
        return False
    return all(
        part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/")
    )
