"""The agent spec's validators, said in its JSON Schema: what the server refuses, the API's
schema states, so a request valid by the schema is not refused for its shape."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from agentfarm.domain import launch

#: ``launch.valid_branch`` as a pattern, short names only (no ``refs/...``).
BRANCH_PATTERN = (
    r"^(?!-|/|\.|refs/)(?!(?:HEAD|@)$)(?!.*(?:\.\.|//|@\{|/\.|\.lock/))"
    r"(?!.*(?:/|\.|\.lock)$)[^\x00-\x20\x7f~^:?*\[\\]{1,255}$"
)
#: After the whitespace is stripped: not blank, no option, no ext:: transport, no
#: credentials in the URL (``gittokens.has_url_credentials``), no NUL or newline.
REPO: dict[str, Any] = {
    "pattern": r"^(?=[^\x00\n]*\S)(?!\s*-)(?!\s*[eE][xX][tT]::)"
    r"(?!\s*(?:[hH][tT][tT][pP][sS]?|[fF][tT][pP][sS]?|[gG][iI][tT])://[^/?#]*@)"
    r"(?!\s*[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*:[^/?#@]*@)[^\x00\n]+$"
}
#: A command line starts with its program, not an option (``items`` then holds for the
#: arguments after it only: the program's item says all of it).
PROGRAM_FIRST: dict[str, Any] = {
    "prefixItems": [{"type": "string", "maxLength": 4096, "pattern": r"^\s*[^\s\-\x00][^\x00]*$"}]
}
#: Not blank once stripped, no NUL.
ARGUMENT: dict[str, Any] = {"pattern": r"^[^\x00]*[^\s\x00][^\x00]*$"}


def env(name_pattern: str, reserved: list[Any]) -> dict[str, Any]:
    return {
        "maxProperties": 200,
        "propertyNames": {"pattern": name_pattern, "not": {"enum": reserved}},
    }


#: Across fields: a `command` exactly for the command agent, a git token only for an
#: http(s) repository.
ACROSS: dict[str, Any] = {
    "allOf": [
        {
            "if": {"required": ["agent"], "properties": {"agent": {"const": "command"}}},
            "then": {"required": ["command"], "properties": {"command": {"type": "object"}}},
            "else": {"properties": {"command": {"type": "null"}}},
        },
        {
            "if": {
                "required": ["git_token_secret"],
                "properties": {"git_token_secret": {"type": "string", "minLength": 1}},
            },
            "then": {"properties": {"repo": {"pattern": "^[hH][tT][tT][pP][sS]?://"}}},
        },
    ]
}


def not_blank(characters: str) -> dict[str, Any]:
    """A pattern for strings of ``characters`` (a character class's inside, with the space)
    that are not blank once stripped."""
    solid = characters.replace(" ", "")
    return {"pattern": f"^[{characters}]*[{solid}][{characters}]*$"}


#: A tool pattern's characters (``models.TOOL_RE``), the space among them.
TOOL_CHARS = r"A-Za-z0-9_*:.()\- /,@\[\]"
Tool = Annotated[
    str,
    Field(
        pattern=rf"^[{TOOL_CHARS}]{{1,200}}$",
        # The pattern once the whitespace is stripped, as the schema states it.
        json_schema_extra={"maxLength": 200, **not_blank(TOOL_CHARS)},
    ),
]
Repo = Annotated[str, Field(min_length=1, max_length=4096, json_schema_extra=REPO)]
Branch = Annotated[str, Field(max_length=255, json_schema_extra={"pattern": BRANCH_PATTERN})]


def branch_problem(value: str) -> str | None:
    """Why ``value`` cannot be a base branch (what BRANCH_PATTERN says), or None. Stored
    configs and runs from before this rule load as they are (``context={"stored": True}``)."""
    if launch.valid_branch(value) and not value.startswith("refs/"):
        return None
    return (
        f"{value!r} is not a valid branch name: give a branch's short name (no leading `-`, "
        "no `..`, spaces or `~^:?*[\\`, not HEAD or refs/...)"
    )
