from __future__ import annotations

from agentfarm.domain.pipeline import AttemptKind

DEFAULT_INSTRUCTIONS = "Implement the issue below. Commit your work. Say so if it cannot be done."


def issue_prompt(
    instructions: str, *, repo: str, number: int, title: str, body: str, url: str
) -> str:
    return (
        f"{instructions}\n\n<issue repo={repo!r} number={number} url={url!r}>\n"
        f"<title>{title}</title>\n<body>\n{body}\n</body>\n</issue>\n"
    )


def followup_prompt(
    instructions: str,
    *,
    repo: str,
    number: int,
    pr_number: int,
    kind: AttemptKind,
    request: str,
) -> str:
    return (
        f"{instructions}\n\n<followup repo={repo!r} issue={number} pull={pr_number} "
        f"kind={kind.value!r}>\n{request}\n</followup>\n"
    )
