"""A scripted fake of the Anthropic Messages API, for running the real Claude Code CLI in tests.

It is a real HTTP server on 127.0.0.1 (uvicorn + starlette in a background thread) that
streams Server-Sent Events exactly like ``POST /v1/messages`` does. What it answers is a
*scenario*: a list of turns, each a list of content blocks (text, thinking, tool_use), an HTTP
error, or a delay before either.

Many agents share one server, so the scenario is chosen per request by a marker in a user
message, ``[scenario:NAME]`` or ``[scenario:NAME:ARG]``. The turn to answer is the number of
assistant messages after the latest user message carrying the marker: that keeps working
across tool round-trips, stdin follow-ups and ``--resume`` without any server-side session
state. Requests without a marker (the CLI's own side queries) get a short generic answer.

Standalone, for benchmarks: ``python -m tests.fakes.anthropic_api --port 8765``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import threaded

MARKER_RE = re.compile(r"\[scenario:([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.,=-]*))?\]")
DEFAULT_MODEL = "claude-sonnet-4-5-20250929"


# --- the scenario DSL --------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Thinking:
    thinking: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: dict[str, Any]


Block = Text | Thinking | ToolUse


@dataclass(frozen=True)
class ApiError:
    status: int
    message: str
    type: str = "api_error"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Turn:
    """One model reply: content blocks, or an HTTP error; optionally after a delay."""

    blocks: tuple[Block, ...] = ()
    error: ApiError | None = None
    delay: float = 0.0
    #: Stream the message's start and ``stall_after`` content blocks, then send nothing more
    #: (the connection stays open): a model stream that stops mid-message.
    stall_after: int | None = None
    #: An error turn that is answered only until this time (epoch seconds); afterwards the
    #: scenario reads as if it were not there (a usage limit that has reset).
    until: float | None = None
    #: Extra response headers (e.g. ``anthropic-ratelimit-unified-status: allowed_warning``).
    headers: tuple[tuple[str, str], ...] = ()
    #: Input tokens the reply reports (its price); default: an estimate of the request's.
    input_tokens: int | None = None

    @property
    def stop_reason(self) -> str:
        return "tool_use" if any(isinstance(b, ToolUse) for b in self.blocks) else "end_turn"


def text(value: str, *, delay: float = 0.0) -> Turn:
    return Turn(blocks=(Text(value),), delay=delay)


def tool_use(name: str, input: dict[str, Any], *, delay: float = 0.0) -> Turn:
    return Turn(blocks=(ToolUse(name, input),), delay=delay)


def turn(*blocks: Block, delay: float = 0.0) -> Turn:
    return Turn(blocks=blocks, delay=delay)


def error(status: int, message: str, *, type: str = "api_error", delay: float = 0.0) -> Turn:
    return Turn(error=ApiError(status, message, type), delay=delay)


def delay(seconds: float, then: Turn) -> Turn:
    """``then``, answered after ``seconds``."""
    return Turn(blocks=then.blocks, error=then.error, delay=seconds, input_tokens=then.input_tokens)


def costly(input_tokens: int, then: Turn) -> Turn:
    """``then``, reporting ``input_tokens`` of usage: what makes a reply cost money (a million
    tokens of the default Sonnet model: $3 at list price)."""
    return Turn(blocks=then.blocks, error=then.error, delay=then.delay, input_tokens=input_tokens)


def usage_limit(resets_at: float, *, claim: str = "five_hour") -> Turn:
    """The subscription's usage limit: HTTP 429 with the ``anthropic-ratelimit-unified-*``
    headers the CLI reads (see shared notes: it then prints a ``rate_limit_event``)."""
    headers = (
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", str(int(resets_at))),
        ("anthropic-ratelimit-unified-representative-claim", claim),
    )
    message = "This request would exceed your account's rate limit. Please try again later."
    # The header has whole seconds: the limit lifts when the header says, not a fraction later.
    return Turn(error=ApiError(429, message, "rate_limit_error", headers), until=int(resets_at))


def warned(then: Turn, *, resets_at: float, utilization: float = 0.9) -> Turn:
    """``then``, answered with the headers of a usage limit that is close
    (``allowed_warning``)."""
    headers = (
        ("anthropic-ratelimit-unified-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-reset", str(int(resets_at))),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-5h-utilization", str(utilization)),
        ("anthropic-ratelimit-unified-5h-reset", str(int(resets_at))),
        ("anthropic-ratelimit-unified-5h-surpassed-threshold", str(utilization)),
    )
    return dataclasses.replace(then, headers=headers)


def stall(*blocks: Block, after: int = 0) -> Turn:
    """A reply whose stream stops mid-message after ``after`` of its blocks."""
    return Turn(blocks=blocks, stall_after=after)


#: A scenario factory gets the marker's optional argument (``[scenario:name:ARG]``).
ScenarioFactory = Callable[[str | None], Sequence[Turn]]

#: What a turn past the end of a scenario (or a request without a marker) is answered with.
FALLBACK = text("Done.")


def _write_and_commit(_arg: str | None) -> Sequence[Turn]:
    # Relative paths: the CLI resolves them against its working directory, so the fake needs
    # no knowledge of where the agent runs.
    return [
        tool_use(
            "Write",
            {"file_path": "hello.txt", "content": "Hello from agentfarm.\n"},
        ),
        tool_use(
            "Bash",
            {
                "command": "git add -A && git commit -q -m 'Add hello.txt'",
                "description": "Commit the new file",
            },
        ),
        text("I wrote hello.txt and committed it."),
    ]


def _many_events(arg: str | None) -> Sequence[Turn]:
    # A cheap tool (Bash `true`) alternating with text, for benchmarks of event throughput.
    count = int(arg) if arg else 10
    turns: list[Turn] = []
    for i in range(count):
        turns.append(
            turn(
                Text(f"Step {i}: checking."),
                ToolUse("Bash", {"command": "true", "description": f"step {i}"}),
            )
        )
    turns.append(text(f"Finished {count} steps."))
    return turns


BUILTIN_SCENARIOS: dict[str, ScenarioFactory] = {
    "hello": lambda _arg: [text("Hello! How can I help?")],
    "write-and-commit": _write_and_commit,
    "sleep": lambda _arg: [
        # A bare `sleep 600` is refused by the CLI ("Blocked: standalone sleep"), and Bash
        # tools time out after 2 minutes unless they ask for more.
        tool_use(
            "Bash",
            {"command": "echo sleeping; sleep 600", "description": "Wait", "timeout": 600_000},
        ),
        text("Woke up."),
    ],
    "api-error": lambda _arg: [error(500, "Internal server error (scripted)")],
    "overloaded": lambda _arg: [error(529, "Overloaded (scripted)", type="overloaded_error")],
    "many-events": _many_events,
}


def marker(name: str, arg: str | int | None = None) -> str:
    """The marker to put in a prompt to select scenario ``name``."""
    return f"[scenario:{name}]" if arg is None else f"[scenario:{name}:{arg}]"


# --- request analysis --------------------------------------------------------------------


def _texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                yield block["text"]


def select_turn(messages: Sequence[Any]) -> tuple[str | None, str | None, int]:
    """(scenario name, argument, turn index) for a request's ``messages``."""
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        for chunk in _texts(message.get("content")):
            found = MARKER_RE.search(chunk)
            if found:
                later = messages[position + 1 :]
                # role "system" entries may appear mid-conversation: only assistants count.
                index = sum(
                    1 for m in later if isinstance(m, dict) and m.get("role") == "assistant"
                )
                return found.group(1), found.group(2), index
    return None, None, 0


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    scenario: str | None = None
    turn: int | None = None


# --- SSE ---------------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunks(value: str, size: int = 24) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _block_events(index: int, block: Block, tool_id: str) -> list[bytes]:
    events: list[bytes] = []
    if isinstance(block, Text):
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": c} for c in _chunks(block.text)]
    elif isinstance(block, Thinking):
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": c} for c in _chunks(block.thinking)]
        deltas.append({"type": "signature_delta", "signature": "ZmFrZS1zaWduYXR1cmU="})
    else:
        start = {"type": "tool_use", "id": tool_id, "name": block.name, "input": {}}
        raw = json.dumps(block.input)
        deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(raw)]
    events.append(
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    )
    for delta in deltas:
        events.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _estimate_tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


# --- the server --------------------------------------------------------------------------


@dataclass
class FakeAnthropic:
    """The fake API. ``start()`` serves it on a random port; ``base_url`` is for the CLI."""

    scenarios: dict[str, ScenarioFactory] = field(default_factory=lambda: dict(BUILTIN_SCENARIOS))
    requests: list[RecordedRequest] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _served: threaded.ThreadedServer = field(default_factory=threaded.ThreadedServer, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def register(self, name: str, turns: Sequence[Turn] | ScenarioFactory) -> str:
        """Add a scenario; returns its marker for the prompt."""
        if callable(turns):
            self.scenarios[name] = turns
        else:
            fixed = list(turns)
            self.scenarios[name] = lambda _arg: fixed
        return marker(name)

    def requests_for(self, scenario: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.scenario == scenario]

    # -- HTTP handlers --

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/api/hello", self._hello, methods=["GET", "HEAD"]),
                Route(
                    "/{path:path}",
                    self._not_found,
                    methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                ),
            ]
        )

    async def _hello(self, request: Request) -> Response:
        self._record(request, None)
        return JSONResponse({"message": "hello"})

    async def _not_found(self, request: Request) -> Response:
        self._record(request, None)
        return JSONResponse(
            {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}},
            status_code=404,
        )

    async def _messages(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._record(request, body)
            return _error_response(
                ApiError(400, "messages: field required", "invalid_request_error")
            )
        name, arg, index = select_turn(body["messages"])
        record = self._record(request, body)
        record.scenario, record.turn = name, index
        reply = self._reply(name, arg, index)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.error is not None:
            return _error_response(reply.error)
        model = str(body.get("model") or DEFAULT_MODEL)
        tokens = reply.input_tokens
        if tokens is None:
            tokens = _estimate_tokens(body["messages"])
        events = self._message_events(reply, model, tokens)
        if not body.get("stream"):
            return JSONResponse(self._message_json(reply, model))
        headers = dict(reply.headers)
        if reply.stall_after is not None:
            return StreamingResponse(
                _stalled(events, reply.stall_after), media_type="text/event-stream",
                headers=headers,
            )  # fmt: skip
        return StreamingResponse(_iterate(events), media_type="text/event-stream", headers=headers)

    # -- helpers --

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
        now = time.time()
        turns = [t for t in factory(arg) if t.until is None or now < t.until]
        return turns[index] if index < len(turns) else FALLBACK

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_fake{next(self._ids):08d}"

    def _message_events(self, reply: Turn, model: str, input_tokens: int) -> list[bytes]:
        message_id = self._next_id("msg")
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        start = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        events = [_sse("message_start", {"type": "message_start", "message": start})]
        events.append(_sse("ping", {"type": "ping"}))
        output_tokens = 0
        for index, block in enumerate(reply.blocks):
            events.extend(_block_events(index, block, self._next_id("toolu")))
            output_tokens += _estimate_tokens(block.__dict__)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        }
        events.append(_sse("message_delta", delta))
        events.append(_sse("message_stop", {"type": "message_stop"}))
        return events

    def _message_json(self, reply: Turn, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for block in reply.blocks:
            if isinstance(block, Text):
                content.append({"type": "text", "text": block.text})
            elif isinstance(block, Thinking):
                content.append({"type": "thinking", "thinking": block.thinking, "signature": ""})
            else:
                content.append(
                    {
                        "type": "tool_use",
                        "id": self._next_id("toolu"),
                        "name": block.name,
                        "input": block.input,
                    }
                )
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }

    # -- lifecycle --

    def start(self) -> FakeAnthropic:
        self.port = self._served.start(
            self.app(), self.host, self.port, name="fake-anthropic", what="the fake Anthropic API"
        )
        return self

    def stop(self) -> None:
        self._served.stop()

    def __enter__(self) -> FakeAnthropic:
        # `with FakeAnthropic().start() as fake:` is fine too: starting twice is a no-op.
        return self if self._served.running else self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def _stalled(events: list[bytes], blocks: int) -> AsyncIterator[bytes]:
    """The events up to the end of ``blocks`` content blocks, then silence until the client
    goes away (the server's shutdown cancels it)."""
    stops = 0
    for event in events:
        if stops >= blocks and not event.startswith((b"event: message_start", b"event: ping")):
            break
        yield event
        if event.startswith(b"event: content_block_stop"):
            stops += 1
    await asyncio.Event().wait()


def _error_response(err: ApiError) -> Response:
    return JSONResponse(
        {"type": "error", "error": {"type": err.type, "message": err.message}},
        status_code=err.status,
        headers={"request-id": "req_fake", **dict(err.headers)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    fake = FakeAnthropic(host=args.host, port=args.port)
    uvicorn.run(fake.app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
