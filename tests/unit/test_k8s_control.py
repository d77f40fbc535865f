"""The Kubernetes handle's follow-ups and interrupts at unit level: what it execs in the pod,
and how it reads the (hostile) pod's reply. The real exec is on the kubelet tier
(tests/k8s/test_backend_node.py)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from agentfarm.backends.kubernetes import api as k8s_api
from agentfarm.backends.kubernetes import handle as k8s_handle
from agentfarm.backends.kubernetes import manifests
from agentfarm.domain import errors, launch


class ExecApi:
    """Answers every exec with ``reply`` (stdout, failure), or raises ``error``."""

    def __init__(self, reply: tuple[bytes, str | None], error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.calls: list[tuple[str, str, str, list[str], bytes]] = []

    async def exec_pod(
        self, namespace: str, name: str, container: str, command: list[str], stdin: bytes
    ) -> tuple[bytes, str | None]:
        self.calls.append((namespace, name, container, command, stdin))
        if self.error is not None:
            raise self.error
        return self.reply


def handle(api: ExecApi) -> k8s_handle.KubernetesHandle:
    state = k8s_handle.RunState("agents", "agentfarm-run-r1")
    return k8s_handle.KubernetesHandle("r1", api, state)  # type: ignore[arg-type]


async def test_a_follow_up_is_one_request_line_to_the_entrypoint_in_the_agent_container() -> None:
    api = ExecApi((b'{"ok": true}\n', None))
    data = launch.Followup(b'{"text": ', b"}\n").encode("hi")
    await handle(api).send(data)
    ((ns, name, container, command, stdin),) = api.calls
    assert (ns, name, container) == ("agents", "agentfarm-run-r1", manifests.AGENT_CONTAINER)
    assert command == ["python3", manifests.ENTRYPOINT, "control"]
    assert stdin.endswith(b"\n") and stdin.count(b"\n") == 1
    request = json.loads(stdin)
    assert request["op"] == "send" and base64.b64decode(request["data"]) == data
    await handle(api).interrupt()
    assert json.loads(api.calls[-1][4]) == {"op": "interrupt"}


async def test_a_refusal_comes_back_with_its_reason_made_printable() -> None:
    reply = json.dumps({"ok": False, "error": "no turn is running\x1b[31m\n" + "x" * 500})
    with pytest.raises(errors.BackendError) as caught:
        await handle(ExecApi((reply.encode(), None))).interrupt()
    message = str(caught.value)
    assert message.startswith("run r1: no turn is running")
    assert "\x1b" not in message and "\n" not in message and len(message) < 330


@pytest.mark.parametrize(
    ("out", "failure", "expected"),
    [
        (b"", "command terminated with non-zero exit code", "did not answer (command terminated"),
        (b"not json\n", None, "did not answer (no reply)"),
        (b'["ok"]\n', None, "did not answer"),
        (b'{"ok": "yes"}\n', None, "run r1: refused"),
    ],
)
async def test_what_is_not_a_clear_yes_is_an_error(
    out: bytes, failure: str | None, expected: str
) -> None:
    with pytest.raises(errors.BackendError, match=re.escape(expected)):
        await handle(ExecApi((out, failure))).send(b"x")


async def test_an_exec_the_api_refuses_says_what_to_check() -> None:
    refused = k8s_api.ApiError(403, "pods/exec is forbidden")
    with pytest.raises(errors.BackendError, match=r"pods/exec permission"):
        await handle(ExecApi((b"", None), refused)).send(b"x")


def test_the_exec_status_channel() -> None:
    assert k8s_api._exec_failure(b'{"status": "Success"}') is None
    failed = b'{"status": "Failure", "message": "command terminated with exit code 3"}'
    assert k8s_api._exec_failure(failed) == "command terminated with exit code 3"
    assert k8s_api._exec_failure(b"garbage") == "garbage"
