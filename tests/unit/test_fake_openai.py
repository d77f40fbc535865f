"""The scripted fake of the OpenAI Responses API: turn selection, SSE shape, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.fakes import openai_api as fake


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def call(call_id: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "exec_command", "arguments": "{}"}


def output(call_id: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": "ok"}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def events(body: bytes) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for chunk in body.decode().split("\n\n"):
        kind = [line[7:] for line in chunk.splitlines() if line.startswith("event: ")]
        data = [line[6:] for line in chunk.splitlines() if line.startswith("data: ")]
        if data:
            found.append(json.loads(data[0]))
            assert kind == [found[-1]["type"]]
    return found


def post(api: fake.FakeOpenAI, items: list[dict[str, Any]], tools: list[str]) -> httpx.Response:
    body = {
        "model": "m",
        "input": items,
        "stream": True,
        "tools": [{"type": "function", "name": t} for t in tools],
    }
    return httpx.post(f"{api.base_url}/responses", json=body, timeout=10)


def test_turn_index_counts_model_replies_since_the_marked_message() -> None:
    marked = user(f"go {fake.marker('write-and-commit')}")
    assert fake.select_turn([user("x"), marked]) == ("write-and-commit", None, 0)
    # One reply of two items (text + a call) counts once; a tool output separates replies.
    two = [marked, assistant("a"), call("1"), output("1"), call("2"), output("2")]
    assert fake.select_turn(two) == ("write-and-commit", None, 2)
    # A later marked message (a follow-up, or resume) restarts the count.
    again = [*two, assistant("done"), user(fake.marker("hello", 3))]
    assert fake.select_turn(again) == ("hello", "3", 0)
    assert fake.select_turn([user("no marker")]) == (None, None, 0)


@pytest.mark.parametrize(
    ("offered", "name", "arguments"),
    [
        ({"exec_command"}, "exec_command", {"cmd": "ls"}),
        ({"shell_command", "exec_command"}, "shell_command", {"command": "ls"}),
        (set(), "shell", {"command": ["bash", "-lc", "ls"]}),
    ],
)
def test_shell_uses_the_offered_tool(offered: set[str], name: str, arguments: Any) -> None:
    assert fake.shell_call("ls", offered) == (name, arguments)


def test_streams_a_tool_call_then_text_with_usage() -> None:
    with fake.FakeOpenAI() as api:
        marked = user(fake.marker("write-and-commit"))
        first = events(post(api, [marked], ["exec_command"]).content)
        kinds = [e["type"] for e in first]
        assert kinds == [
            "response.created", "response.output_item.added", "response.output_item.done",
            "response.completed",
        ]  # fmt: skip
        assert [e["sequence_number"] for e in first] == [0, 1, 2, 3]
        item = first[2]["item"]
        assert item["type"] == "function_call" and item["name"] == "exec_command"
        assert "hello.txt" in json.loads(item["arguments"])["cmd"]
        done = first[-1]["response"]
        assert done["status"] == "completed" and done["output"] == [item]
        assert done["usage"]["total_tokens"] == (
            done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
        )
        last = [marked, call("1"), output("1"), call("2"), output("2")]
        final = events(post(api, last, ["exec_command"]).content)
        delta = [e for e in final if e["type"] == "response.output_text.delta"]
        assert [d["delta"] for d in delta] == ["I wrote hello.txt and committed it."]
        assert final[-1]["response"]["output"][0]["role"] == "assistant"
        assert [r.turn for r in api.requests_for("write-and-commit")] == [0, 2]


def test_errors_over_http_and_in_stream() -> None:
    with fake.FakeOpenAI() as api:
        refused = post(api, [user(fake.marker("api-error"))], [])
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "Bad request (scripted)"
        failed = events(post(api, [user(fake.marker("stream-error"))], []).content)
        assert [e["type"] for e in failed] == ["response.created", "response.failed"]
        assert failed[-1]["response"]["error"]["message"] == "Model failed (scripted)"
        assert httpx.post(f"{api.base_url}/responses", content=b"{", timeout=10).status_code == 400
        assert httpx.get(f"{api.base_url}/models", timeout=10).status_code == 404


def test_unmarked_requests_and_turns_past_the_end_get_the_fallback() -> None:
    with fake.FakeOpenAI() as api:
        marked = api.register("short", [fake.text("only")])
        past = events(post(api, [user(marked), assistant("only")], []).content)
        plain = events(post(api, [user("hi")], []).content)
        for answer in (past, plain):
            assert answer[-1]["response"]["output"][0]["content"][0]["text"] == "Done."
