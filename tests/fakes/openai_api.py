"""A scripted fake of the OpenAI Responses API, for running the real Codex CLI in tests.

A real HTTP server on 127.0.0.1 (uvicorn + starlette in a background thread) that answers
``POST /v1/responses`` with Server-Sent Events as the real API streams them:
``response.created``, ``response.output_item.added``/``.done`` per output item (text deltas in
between), then ``response.completed`` with usage, or ``response.failed``.

Scenarios, markers and turn counting follow ``tests.fakes.anthropic_api``: the scenario is chosen
by a ``[scenario:NAME]`` marker in the latest user message carrying one, and the turn to answer is
the number of model replies since that message. A reply is a run of model items (assistant
messages, reasoning, tool calls) in ``input``; tool outputs and user messages separate them, so
this keeps working across tool round-trips, follow-ups and ``codex exec resume``.

A ``Shell`` block becomes a call of whichever shell tool the request offers (``shell_command``,
``shell`` or ``exec_command``), so scenarios do not depend on the CLI's tool set.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import threaded
from tests.fakes.anthropic_api import MARKER_RE, RecordedRequest, ScenarioFactory, marker

DEFAULT_MODEL = "gpt-5-codex"
#: Input item types the model produced; anything else (tool outputs, user messages) ends a reply.
MODEL_ITEM_TYPES = frozenset(
    {"reasoning", "function_call", "custom_tool_call", "local_shell_call", "web_search_call"}
)


# --- the scenario DSL --------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Shell:
    """Run ``command`` through the shell tool the request offers."""

    command: str


@dataclass(frozen=True)
class Call:
    """A raw function call, for tools the DSL does not know."""

    name: str
    arguments: dict[str, Any]


Block = Text | Shell | Call


@dataclass(frozen=True)
class ApiError:
    """An HTTP error (``in_stream=False``) or a ``response.failed`` event (``in_stream=True``)."""

    status: int
    message: str
    code: str = "server_error"
    in_stream: bool = False


@dataclass(frozen=True)
class Turn:
    blocks: tuple[Block, ...] = ()
    error: ApiError | None = None
    delay: float = 0.0


def text(value: str, *, delay: float = 0.0) -> Turn:
    return Turn(blocks=(Text(value),), delay=delay)


def shell(command: str, *, delay: float = 0.0) -> Turn:
    return Turn(blocks=(Shell(command),), delay=delay)


def turn(*blocks: Block, delay: float = 0.0) -> Turn:
    return Turn(blocks=blocks, delay=delay)


def error(
    status: int, message: str, *, code: str = "server_error", in_stream: bool = False
) -> Turn:
    return Turn(error=ApiError(status, message, code, in_stream))


FALLBACK = text("Done.")

BUILTIN_SCENARIOS: dict[str, ScenarioFactory] = {
    "hello": lambda _arg: [text("Hello! How can I help?")],
    "write-and-commit": lambda _arg: [
        shell("printf 'Hello from agentfarm.\\n' > hello.txt"),
        shell("git add -A && git commit -q -m 'Add hello.txt'"),
        text("I wrote hello.txt and committed it."),
    ],
    "failing-command": lambda _arg: [shell("exit 3"), text("The command failed.")],
    "sleep": lambda _arg: [shell("echo sleeping; sleep 600"), text("Woke up.")],
    # 400 is not retried by the CLI; 500 is (unless its retries are configured off).
    "api-error": lambda _arg: [error(400, "Bad request (scripted)", code="invalid_request")],
    "server-error": lambda _arg: [error(500, "Internal server error (scripted)")],
    "stream-error": lambda _arg: [error(200, "Model failed (scripted)", in_stream=True)],
}


# --- request analysis --------------------------------------------------------------------


def _texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _is_model_item(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    if item.get("type", "message") == "message":
        return item.get("role") == "assistant"
    return item.get("type") in MODEL_ITEM_TYPES


def select_turn(items: Sequence[Any]) -> tuple[str | None, str | None, int]:
    """(scenario name, argument, turn index) for a request's ``input`` items."""
    for position in range(len(items) - 1, -1, -1):
        item = items[position]
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        for chunk in _texts(item.get("content")):
            found = MARKER_RE.search(chunk)
            if found:
                replies, inside = 0, False
                for later in items[position + 1 :]:
                    model = _is_model_item(later)
                    replies += model and not inside
                    inside = model
                return found.group(1), found.group(2), replies
    return None, None, 0


def tool_names(body: Any) -> set[str]:
    tools = body.get("tools") if isinstance(body, dict) else None
    return {str(t.get("name")) for t in tools or [] if isinstance(t, dict) and t.get("name")}


def shell_call(command: str, offered: set[str]) -> tuple[str, dict[str, Any]]:
    """The (tool name, arguments) that run ``command`` with the shell tool on offer."""
    if "shell_command" in offered:
        return "shell_command", {"command": command}
    if "exec_command" in offered:
        return "exec_command", {"cmd": command}
    return "shell", {"command": ["bash", "-lc", command]}


# --- SSE ---------------------------------------------------------------------------------


def _sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _estimate_tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


@dataclass
class FakeOpenAI:
    """The fake API. ``start()`` serves it on a random port; ``base_url`` ends in ``/v1``."""

    scenarios: dict[str, ScenarioFactory] = field(default_factory=lambda: dict(BUILTIN_SCENARIOS))
    requests: list[RecordedRequest] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _served: threaded.ThreadedServer = field(default_factory=threaded.ThreadedServer, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def register(self, name: str, turns: Sequence[Turn]) -> str:
        fixed = list(turns)
        self.scenarios[name] = lambda _arg: fixed
        return marker(name)

    def requests_for(self, scenario: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.scenario == scenario]

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=["GET", "HEAD", "POST"]),
            ]
        )

    async def _not_found(self, request: Request) -> Response:
        self._record(request, None)
        return _error_response(ApiError(404, "Not found", "not_found"))

    async def _responses(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        record = self._record(request, body)
        if not isinstance(body, dict) or not isinstance(body.get("input"), list):
            return _error_response(ApiError(400, "input: field required", "invalid_request"))
        name, arg, index = select_turn(body["input"])
        record.scenario, record.turn = name, index
        reply = self._reply(name, arg, index)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None and not reply.error.in_stream:
            return _error_response(reply.error)
        events = self._events(reply, str(body.get("model") or DEFAULT_MODEL), body)
        return StreamingResponse(_iterate(events), media_type="text/event-stream")

    def _record(self, request: Request, body: Any) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=dict(request.headers),
            body=body,
        )
        with self._lock:
            self.requests.append(record)
        return record

    def _reply(self, name: str | None, arg: str | None, index: int) -> Turn:
        factory = self.scenarios.get(name) if name else None
        if factory is None:
            return FALLBACK
        turns = factory(arg)
        return turns[index] if index < len(turns) else FALLBACK

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_fake{next(self._ids):08d}"

    def _item(self, block: Block, offered: set[str]) -> dict[str, Any]:
        if isinstance(block, Text):
            return {
                "type": "message",
                "id": self._next_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": block.text, "annotations": []}],
            }
        name, arguments = (
            shell_call(block.command, offered)
            if isinstance(block, Shell)
            else (block.name, block.arguments)
        )
        return {
            "type": "function_call",
            "id": self._next_id("fc"),
            "status": "completed",
            "call_id": self._next_id("call"),
            "name": name,
            "arguments": json.dumps(arguments),
        }

    def _events(self, reply: Turn, model: str, body: dict[str, Any]) -> list[bytes]:
        seq = itertools.count()
        response: dict[str, Any] = {
            "id": self._next_id("resp"),
            "object": "response",
            "created_at": 0,
            "status": "in_progress",
            "model": model,
            "output": [],
        }

        def event(kind: str, **data: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **data})

        events = [event("response.created", response=dict(response))]
        if reply.error is not None:
            failed = {
                **response,
                "status": "failed",
                "error": {"code": reply.error.code, "message": reply.error.message},
            }
            events.append(event("response.failed", response=failed))
            return events
        offered = tool_names(body)
        output: list[dict[str, Any]] = []
        for index, block in enumerate(reply.blocks):
            item = self._item(block, offered)
            if item["type"] == "message":
                added = {**item, "status": "in_progress", "content": []}
                events.append(event("response.output_item.added", output_index=index, item=added))
                events.append(
                    event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        delta=item["content"][0]["text"],
                    )
                )
            else:
                events.append(event("response.output_item.added", output_index=index, item=item))
            events.append(event("response.output_item.done", output_index=index, item=item))
            output.append(item)
        input_tokens, output_tokens = _estimate_tokens(body.get("input")), _estimate_tokens(output)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        done = {**response, "status": "completed", "output": output, "usage": usage}
        events.append(event("response.completed", response=done))
        return events

    # -- lifecycle --

    def start(self) -> FakeOpenAI:
        self.port = self._served.start(
            self.app(), self.host, self.port, name="fake-openai", what="the fake OpenAI API"
        )
        return self

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> FakeOpenAI:
        return self if self._served.running else self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in events:
        yield chunk


def _error_response(err: ApiError) -> Response:
    return JSONResponse(
        {"error": {"message": err.message, "type": err.code, "param": None, "code": err.code}},
        status_code=err.status,
        headers={"x-request-id": "req_fake"},
    )
