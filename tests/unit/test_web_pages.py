"""Cockpit pages on the fake backend: configs with field errors, one-tap launch with a prompt
override, the run page's rendering, older pages, and the resumable live stream."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx

from agentfarm.backends.fake import FakeBackend, Step, claude_like_script
from agentfarm.domain import models

from .web_helpers import cockpit, login, page_csrf

FORM = {"name": "demo", "repo": "/srv/repo", "prompt": "fix the bug",
        "permission_mode": "bypassPermissions", "backend": "local", "sandbox_mode": "bwrap",
        "network": "allowlist", "memory_mb": "4096"}  # fmt: skip


async def wait_terminal(api: httpx.AsyncClient, run_id: str) -> dict[str, object]:
    async with asyncio.timeout(10):
        while True:
            run: dict[str, object] = (await api.get(f"/api/runs/{run_id}")).json()
            if run["status"] in ("succeeded", "failed", "stopped", "lost"):
                return run
            await asyncio.sleep(0.01)


async def test_config_form_shows_errors_next_to_fields_then_saves(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        token = await page_csrf(browser, "/configs/new")
        bad = {**FORM, "name": "Bad Name", "max_turns": "0", "env": "NOEQUALS", "csrf_token": token}
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422
        assert 'id="name-error"' in response.text and 'id="env-error"' in response.text
        assert 'value="Bad Name"' in response.text  # what was typed is kept
        bad = {**FORM, "max_turns": "0", "env": "ANTHROPIC_API_KEY=x", "csrf_token": token}
        response = await browser.post("/configs/new", data=bad)
        assert 'id="max_turns-error"' in response.text and "set by agentfarm" in response.text
        ok = await browser.post("/configs/new", data={**FORM, "csrf_token": token})
        assert ok.status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert (
            saved["backend"]["sandbox"]["network"] == "allowlist"
            and saved["prompt"] == "fix the bug"
        )
        again = await browser.post("/configs/new", data={**FORM, "csrf_token": token})
        assert again.status_code == 422 and "already exists" in again.text
        # Edit keeps the id; duplicate prefills a copy; delete removes it.
        edit = await browser.post(
            f"/configs/{saved['id']}/edit", data={**FORM, "max_turns": "7", "csrf_token": token}
        )
        assert edit.status_code == 303
        assert (await cp.api.get("/api/configs/demo")).json()["max_turns"] == 7
        copy = await browser.get(f"/configs/new?copy={saved['id']}")
        assert 'value="demo-copy"' in copy.text
        gone = await browser.post(f"/configs/{saved['id']}/delete", data={"csrf_token": token})
        assert gone.status_code == 303
        assert (await cp.api.get("/api/configs")).json() == []


async def test_launch_with_a_prompt_override_leaves_the_config_alone(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        cfg = (
            await cp.api.post(
                "/api/configs", json={"name": "demo", "repo": "/r", "prompt": "saved"}
            )
        ).json()
        token = await page_csrf(browser)
        launched = await browser.post(
            f"/configs/{cfg['id']}/launch", data={"csrf_token": token, "prompt": "just once"}
        )
        assert launched.status_code == 303
        run_id = launched.headers["location"].rsplit("/", 1)[1]
        run = await wait_terminal(cp.api, run_id)
        assert run["spec"]["prompt"] == "just once"  # type: ignore[index]
        assert (await cp.api.get("/api/configs/demo")).json()["prompt"] == "saved"
        plain = await browser.post(f"/configs/{cfg['id']}/launch", data={"csrf_token": token})
        plain_id = plain.headers["location"].rsplit("/", 1)[1]
        assert (await wait_terminal(cp.api, plain_id))["spec"]["prompt"] == "saved"  # type: ignore[index]
        dashboard = await browser.get("/?status=succeeded")
        assert run_id in dashboard.text and plain_id in dashboard.text
        assert run_id not in (await browser.get("/?status=running")).text


def busy_script(count: int) -> object:
    def script(run: models.Run, command: object) -> list[Step]:
        steps = claude_like_script(run, command)  # type: ignore[arg-type]
        session = f"fake-session-{run.id}"
        extra = []
        for i in range(count):
            call = {
                "type": "assistant",
                "session_id": session,
                "message": {
                    "id": f"m{i}",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": f"toolu_{i}",
                            "name": "Bash",
                            "input": {"command": f"echo {i}"},
                        }
                    ],
                },
            }
            result = {
                "type": "user",
                "session_id": session,
                "message": {
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": f"toolu_{i}",
                            "content": f"out {i}",
                            "is_error": i == 3,
                        }
                    ]
                },
            }
            extra += [
                Step("stdout", json.dumps(call).encode()),
                Step("stdout", json.dumps(result).encode()),
            ]
        html = {
            "type": "assistant",
            "session_id": session,
            "message": {
                "id": "mx",
                "content": [
                    {
                        "type": "text",
                        "text": "**bold** <script>alert(1)</script> [x](javascript:alert(1))",
                    }
                ],
            },
        }
        extra.append(Step("stdout", json.dumps(html).encode()))
        return steps[:2] + extra + steps[2:]  # fmt: skip

    return script


async def test_run_page_renders_events_for_people_and_pages_older_ones(tmp_path: Path) -> None:
    backend = FakeBackend(script=busy_script(250))  # type: ignore[arg-type]
    async with cockpit(tmp_path, backend) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        await wait_terminal(cp.api, run_id)
        last = len((await cp.api.get(f"/api/runs/{run_id}/events", params={"limit": 5000})).json())
        page = await browser.get(f"/runs/{run_id}")
        assert page.status_code == 200
        text = page.text
        assert f'data-last-seq="{last}"' in text
        assert text.count('class="ev ') == 200  # only the newest page of events
        assert "<strong>bold</strong>" in text and "<script>alert(1)" not in text
        assert "&lt;script&gt;" in text and 'href="javascript:' not in text
        assert 'class="tool-name">Bash</span> <span class="tool-arg">echo 249</span>' in text
        assert "Finished: success" in text and "$0.0012" in text
        assert "Raw JSON events" in text and "Stop" not in text.split("Raw JSON")[0][-300:]
        assert "badge-success" in text
        older = await browser.get(f"/runs/{run_id}/older", params={"before": last - 199})
        assert older.status_code == 200
        seqs = [int(s.split('"')[0]) for s in older.text.split('data-seq="')[1:]]
        assert seqs == list(range(last - 399, last - 199))
        assert "Load older events" in older.text
        first = await browser.get(f"/runs/{run_id}/older", params={"before": 5})
        assert "Load older events" not in first.text
        assert (
            'class="tool-result is-error" data-for-tool="toolu_3"'
            in (await browser.get(f"/runs/{run_id}/older", params={"before": 20})).text
        )


async def test_live_stream_resumes_after_the_last_seq_seen(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        await wait_terminal(cp.api, run_id)
        total = len((await cp.api.get(f"/api/runs/{run_id}/events")).json())

        async def seqs(**kwargs: object) -> list[int]:
            response = await browser.get(f"/runs/{run_id}/live", **kwargs)  # type: ignore[arg-type]
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "event: end" in response.text
            return [int(s.split('"')[0]) for s in response.text.split('data-seq="')[1:]]

        assert await seqs() == list(range(1, total + 1))
        assert await seqs(params={"after": 3}) == list(range(4, total + 1))
        assert await seqs(headers={"Last-Event-ID": "5"}) == list(range(6, total + 1))


async def test_stop_from_the_run_page(tmp_path: Path) -> None:
    def slow(run: models.Run, command: object) -> list[Step]:
        steps = claude_like_script(run, command)  # type: ignore[arg-type]
        return [*steps[:2], Step("stdout", steps[2].data, delay=30), *steps[3:]]

    async with cockpit(tmp_path, FakeBackend(script=slow)) as cp, cp.browser() as browser:  # type: ignore[arg-type]
        await cp.add_user()
        await login(browser)
        await cp.api.post("/api/configs", json={"name": "demo", "repo": "/r", "prompt": "go"})
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        token = await page_csrf(browser, f"/runs/{run_id}")
        stopped = await browser.post(f"/runs/{run_id}/stop", data={"csrf_token": token})
        assert stopped.status_code == 303
        assert (await wait_terminal(cp.api, run_id))["status"] == "stopped"


async def test_network_policy_on_the_form_the_config_list_and_the_run_page(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = await browser.get("/configs/new")
        assert '<select class="input" name="network"' in form.text
        assert '<option value="allowlist" selected>' in form.text
        token = await page_csrf(browser, "/configs/new")
        bad = {**FORM, "egress": "pypi.org\n@nope", "csrf_token": token}
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422
        assert 'id="egress-error"' in response.text and "unknown group" in response.text
        good = {**FORM, "network": "open", "egress": "@pypi\nexample.com:8443", "csrf_token": token}
        assert (await browser.post("/configs/new", data=good)).status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert saved["backend"]["sandbox"]["network"] == "open"
        assert saved["backend"]["sandbox"]["egress"] == ["@pypi", "example.com:8443"]
        listed = await browser.get("/configs")
        assert "network open" in listed.text.split('id="config-demo"')[1]
        edit = await browser.get(f"/configs/{saved['id']}/edit")
        assert '<option value="open" selected>' in edit.text and "example.com:8443" in edit.text
        run_id = (await cp.api.post("/api/runs", json={"config": "demo"})).json()["id"]
        page = await browser.get(f"/runs/{run_id}")
        head = page.text.split('id="run-head"')[1].split("</dl>")[0]
        assert "<dt>network</dt>" in head and "badge-warning" in head and "open" in head


K8S_FORM = {
    **FORM,
    "backend": "kubernetes",
    "k8s_namespace": "agents",
    "k8s_runtime_class": "gvisor",
    "k8s_image": "registry.example/agent:1.2",
    "k8s_credentials": "shared-home",
    "k8s_service_account": "agent-runner",
    "k8s_requests_cpu": "250m",
    "k8s_requests_memory": "512Mi",
    "k8s_requests_ephemeral_storage": "",
    "k8s_limits_cpu": "1",
    "k8s_limits_memory": "2Gi",
    "k8s_limits_ephemeral_storage": "10Gi",
    "k8s_node_selector": "kubernetes.io/arch: amd64",
    "k8s_tolerations": '[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}]',
}


async def test_config_form_has_the_kubernetes_fields_with_errors_next_to_each(
    tmp_path: Path,
) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = await browser.get("/configs/new")
        for name in ("k8s_namespace", "k8s_image", "k8s_limits_memory", "k8s_tolerations"):
            assert f'name="{name}"' in form.text
        assert 'fieldset class="backend-fields stack" data-backend="kubernetes"' in form.text
        token = await page_csrf(browser, "/configs/new")
        bad = {
            **K8S_FORM,
            "k8s_namespace": "Not_A_Namespace",
            "k8s_limits_cpu": "lots",
            "k8s_node_selector": "- a list",
            "k8s_tolerations": "{unclosed",
            "sandbox_mode": "nonsense",  # the local fields are not read for kubernetes
            "csrf_token": token,
        }
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422
        for name in ("k8s_namespace", "k8s_limits_cpu", "k8s_node_selector", "k8s_tolerations"):
            assert f'id="{name}-error"' in response.text, name
        assert 'id="sandbox_mode-error"' not in response.text
        assert "a DNS label" in response.text and "a Kubernetes quantity" in response.text
        assert 'value="Not_A_Namespace"' in response.text  # what was typed is kept
        ok = await browser.post("/configs/new", data={**K8S_FORM, "csrf_token": token})
        assert ok.status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert saved["backend"] == {
            "type": "kubernetes",
            "namespace": "agents",
            "runtime_class": "gvisor",
            "image": "registry.example/agent:1.2",
            "resources": {
                "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral_storage": None},
                "limits": {"cpu": "1", "memory": "2Gi", "ephemeral_storage": "10Gi"},
            },
            "node_selector": {"kubernetes.io/arch": "amd64"},
            "tolerations": [
                {"key": "agents", "operator": "Exists", "value": None, "effect": "NoSchedule",
                 "toleration_seconds": None},
            ],
            "credentials": "shared-home",
            "service_account": "agent-runner",
        }  # fmt: skip
        edit = await browser.get(f"/configs/{saved['id']}/edit")
        assert '<option value="kubernetes" selected>' in edit.text
        assert 'value="agents"' in edit.text and "kubernetes.io/arch: amd64" in edit.text
        assert '<option value="shared-home" selected>' in edit.text
        # Saving the edit form unchanged keeps every field.
        values = dict(
            re.findall(r'<input class="input" name="(k8s_\w+)" value="([^"]*)"', edit.text)
        )
        again = {**K8S_FORM, **values, "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=again)).status_code == 303
        assert (await cp.api.get("/api/configs/demo")).json()["backend"] == saved["backend"]
        # Back to local: the sandbox's fields apply, the Kubernetes ones are dropped.
        local = {**FORM, "cpus": "1.5", "pids": "256", "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=local)).status_code == 303
        backend = (await cp.api.get("/api/configs/demo")).json()["backend"]
        assert backend["type"] == "local" and "namespace" not in backend


async def test_config_form_sets_the_sandbox_cpus_and_pids(tmp_path: Path) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        await cp.add_user()
        await login(browser)
        form = await browser.get("/configs/new")
        assert 'name="pids" inputmode="numeric" value="1024"' in form.text  # the default shows
        token = await page_csrf(browser, "/configs/new")
        bad = {**FORM, "cpus": "-1", "pids": "3", "csrf_token": token}
        response = await browser.post("/configs/new", data=bad)
        assert response.status_code == 422
        assert 'id="cpus-error"' in response.text and 'id="pids-error"' in response.text
        good = {**FORM, "cpus": "1.5", "pids": "256", "csrf_token": token}
        assert (await browser.post("/configs/new", data=good)).status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert (saved["backend"]["sandbox"]["cpus"], saved["backend"]["sandbox"]["pids"]) == (
            1.5,
            256,
        )
        edit = await browser.get(f"/configs/{saved['id']}/edit")
        assert 'name="cpus" inputmode="decimal" value="1.5"' in edit.text
        assert 'name="pids" inputmode="numeric" value="256"' in edit.text
        # A post without the newer fields (an older form, a script) keeps them.
        older = {**FORM, "max_turns": "3", "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=older)).status_code == 303
        box = (await cp.api.get("/api/configs/demo")).json()["backend"]["sandbox"]
        assert (box["cpus"], box["pids"]) == (1.5, 256)
        # An emptied field means no limit.
        unset = {**FORM, "cpus": "", "pids": "", "csrf_token": token}
        assert (await browser.post(f"/configs/{saved['id']}/edit", data=unset)).status_code == 303
        box = (await cp.api.get("/api/configs/demo")).json()["backend"]["sandbox"]
        assert (box["cpus"], box["pids"]) == (None, None)


async def test_limits_on_the_form_and_queue_places_on_the_dashboard_and_run_page(
    tmp_path: Path,
) -> None:
    def slow(run: models.Run, command: object) -> list[Step]:
        steps = claude_like_script(run, command)  # type: ignore[arg-type]
        return [*steps[:2], Step("stdout", steps[2].data, delay=600), *steps[3:]]

    backend = FakeBackend(script=slow)  # type: ignore[arg-type]
    async with (
        cockpit(tmp_path, backend, max_queued_runs=2) as cp,
        cp.browser() as browser,
    ):
        await cp.add_user()
        await login(browser)
        token = await page_csrf(browser, "/configs/new")
        limits = {"max_budget_usd": "0.5", "max_minutes": "30", "max_concurrent": "1",
                  "daily_budget_usd": "5", "monthly_budget_usd": "50"}  # fmt: skip
        bad = await browser.post(
            "/configs/new", data={**FORM, **limits, "max_concurrent": "0", "csrf_token": token}
        )
        assert bad.status_code == 422 and 'id="max_concurrent-error"' in bad.text
        ok = await browser.post("/configs/new", data={**FORM, **limits, "csrf_token": token})
        assert ok.status_code == 303
        saved = (await cp.api.get("/api/configs/demo")).json()
        assert {k: saved[k] for k in limits} == {k: float(v) for k, v in limits.items()}
        form = await browser.get(f"/configs/{saved['id']}/edit")
        assert 'name="daily_budget_usd" inputmode="decimal" value="5.0"' in form.text
        first = (await cp.api.post("/api/runs", json={"config": "demo"})).json()
        async with asyncio.timeout(10):
            while (await cp.api.get(f"/api/runs/{first['id']}")).json()["status"] != "running":
                await asyncio.sleep(0.01)
        second = (await cp.api.post("/api/runs", json={"config": "demo"})).json()
        assert second["queue"]["waiting_for"] == "config demo 1/1"
        dashboard = await browser.get("/")
        assert "#1 of 1 in the queue" in dashboard.text
        assert "waiting for config demo 1/1" in dashboard.text
        assert 'class="spend-chart"' in dashboard.text
        run_page = await browser.get(f"/runs/{second['id']}")
        assert "waiting for config demo 1/1" in run_page.text
        await cp.api.post("/api/runs", json={"config": "demo"})
        # The queue is full (2): the cockpit's launch says so, with 429.
        launch = await browser.post(
            f"/configs/{saved['id']}/launch", data={"csrf_token": token, "prompt": ""}
        )
        assert launch.status_code == 429 and "the queue is full" in launch.text
        for run in (await cp.api.get("/api/runs")).json():
            await cp.api.post(f"/api/runs/{run['id']}/stop")


async def test_html_pages_carry_the_security_headers_and_other_responses_do_not(
    tmp_path: Path,
) -> None:
    async with cockpit(tmp_path) as cp, cp.browser() as browser:
        page = await browser.get("/login")
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
        api = await cp.api.get("/api/runs")
        assert "content-security-policy" not in api.headers
