"""Parts of an agent spec with their own shape: the generic command agent's program and a
config's watchdog thresholds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentfarm.domain import spec_schema


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


PromptDelivery = Literal["stdin", "argument", "none"]


class CommandSpec(Strict):
    """The generic command agent's program: any command line, its output shown line by line,
    its exit code deciding the run's status."""

    argv: list[
        Annotated[str, Field(min_length=1, max_length=4096, json_schema_extra=spec_schema.ARGUMENT)]
    ] = Field(
        ...,
        min_length=1,
        max_length=200,
        description="The program and its arguments, e.g. `[sh, -c, 'make fix']`: a path, or "
        "a name found on the server's PATH.",
        json_schema_extra=spec_schema.PROGRAM_FIRST,
    )
    prompt: PromptDelivery = Field(
        "stdin",
        description="How the prompt reaches it: `stdin` (then stdin closes), `argument` (the "
        "last argument) or `none`.",
    )

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, value: list[str]) -> list[str]:
        if any("\x00" in arg for arg in value):
            raise ValueError("an argument may not contain a NUL character")
        if value[0].startswith("-"):
            raise ValueError("the first item must be the program, not an option")
        return value


class WatchdogSpec(Strict):
    """A config's watchdog thresholds; each one left out is the server's setting."""

    model_stall_seconds: float | None = Field(
        None, ge=0, le=86_400, description="Waiting for the model with no output (0: never)."
    )
    tool_quiet_seconds: float | None = Field(
        None, ge=0, le=7 * 86_400, description="A tool running without output (0: never)."
    )
    stall_resumes: int | None = Field(
        None, ge=0, le=100, description="Resumes after a stall before the run fails."
    )
