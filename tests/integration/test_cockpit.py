"""The cockpit in a real browser (Debian's chromium via Playwright) at a phone's viewport,
against a real server process running the real Claude Code CLI on the scripted fake model.

Screenshots of each page go to test-artifacts/cockpit/ (gitignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import anthropic_api as fake
from tests.integration.server import CHROMIUM, CHROMIUM_ARGS, Server
from tests.realparts import missing

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "cockpit"
PHONE = {"width": 390, "height": 844}
PASSWORD = "phone-password-1"


def start_server(tmp_path: Path, claude_bin: str, base_url: str, **env: str) -> Server:
    if shutil.which("bwrap") is None:
        missing("bubblewrap", "apt-get install bubblewrap (make test does it)")
    return Server(
        tmp_path / "data",
        {
            "AGENTFARM_CLAUDE_BIN": claude_bin,
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-ant-cockpit-secret-value",
            "AGENTFARM_STOP_GRACE_SECONDS": "3",
            **env,
        },
        tmp_path / "server.log",
    ).start()


@pytest.fixture
def server(tmp_path: Path, claude_bin: str, fake_anthropic: fake.FakeAnthropic) -> Iterator[Server]:
    srv = start_server(tmp_path, claude_bin, fake_anthropic.base_url)
    result = srv.cli("user", "add", "ada", input=PASSWORD + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        missing("chromium", "apt-get install chromium (make test does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python", "pip install -r requirements-test.txt (make test does)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def phone(chromium: Any, server: Server) -> Iterator[Any]:
    context = chromium.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
        base_url=server.url, color_scheme="dark", bypass_csp=True,  # lets waits poll JS
    )  # fmt: skip
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def sign_in(page: Any) -> None:
    page.goto("/")
    assert "/login" in page.url
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, "login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def make_config(srv: Server, source: Path, name: str, prompt: str) -> None:
    with srv.client() as c:
        response = c.post(
            "/api/configs",
            json={"name": name, "repo": str(source), "prompt": prompt,
                  "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}},
        )  # fmt: skip
        assert response.status_code == 201, response.text


def launch(srv: Server, config: str) -> str:
    with srv.client() as c:
        response = c.post("/api/runs", json={"config": config})
        assert response.status_code == 201, response.text
        run_id: str = response.json()["id"]
        return run_id


def api_seqs(srv: Server, run_id: str) -> list[int]:
    with srv.client() as c:
        return [
            e["seq"] for e in c.get(f"/api/runs/{run_id}/events", params={"limit": 5000}).json()
        ]


def page_seqs(page: Any) -> list[int]:
    seqs: list[int] = page.eval_on_selector_all(
        "#stream [data-seq]", "els => els.map(e => Number(e.dataset.seq))"
    )
    return seqs


def slow_scenario(fake_anthropic: fake.FakeAnthropic, name: str, steps: int, delay: float) -> str:
    turns = [
        fake.turn(
            fake.Text(f"Step **{i}** of the slow job."),
            fake.ToolUse("Bash", {"command": f"echo step-{i}", "description": f"step {i}"}),
            delay=delay,
        )
        for i in range(steps)
    ]
    turns.append(fake.text("All steps done.", delay=delay))
    return fake_anthropic.register(name, turns)


def test_sign_in_create_launch_and_watch_live(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    page = phone
    marker = slow_scenario(fake_anthropic, "cockpit-live", steps=4, delay=0.8)
    sign_in(page)
    shot(page, "dashboard-empty")
    page.get_by_role("link", name="Configs").click()
    page.get_by_role("link", name="New config").click()
    page.locator("input[name=name]").fill("Bad Name")
    page.get_by_label("Repository (local path or git URL)").fill(str(source))
    page.get_by_role("button", name="Save").click()
    assert page.locator("#name-error").is_visible()
    shot(page, "config-form-error")
    page.locator("input[name=name]").fill("phone-job")
    page.get_by_label("Prompt", exact=True).fill(f"{marker} do the slow job")
    page.get_by_label("Environment (KEY=VALUE per line)").fill("CLAUDE_CODE_MAX_RETRIES=0")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/configs")
    shot(page, "configs")
    page.get_by_role("button", name="Launch phone-job").click()  # one tap
    page.wait_for_url("**/runs/*")
    run_id = page.url.rsplit("/", 1)[1]
    # Events appear while the agent works: the first tool call shows before the run ends.
    page.locator("details.tool").first.wait_for()
    with server.client() as c:
        assert c.get(f"/api/runs/{run_id}").json()["status"] == "running"
    shot(page, "run-live")
    page.locator("#run-status .badge-success").wait_for(timeout=90_000)
    page.locator(".result-card").wait_for()
    assert page.locator(".ev-agent-text strong").first.inner_text() == "0"  # markdown
    first_call = page.locator("details.tool").first
    assert "echo step-0" in first_call.locator("summary").inner_text()
    first_call.locator("summary").click()
    assert "step-0" in first_call.locator(".tool-slot").inner_text()  # its result, inside
    assert page_seqs(page) == api_seqs(server, run_id)
    assert page.locator("#stop-form").count() == 0
    shot(page, "run-finished")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "readme-phone.png"))  # docs/img/cockpit-phone.png
    page.get_by_role("link", name="Runs").click()
    page.locator(f'[data-run="{run_id}"] .badge-success').wait_for()
    shot(page, "dashboard")
    page.get_by_role("link", name="Settings").click()
    page.get_by_placeholder("token name, e.g. laptop").fill("phone")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#new-token").input_value()
    shot(page, "settings")
    assert (
        httpx.get(
            f"{server.url}/api/runs", headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 200
    )


def test_config_form_shows_the_chosen_backends_fields(
    phone: Any, server: Server, source: Path
) -> None:
    page = phone
    sign_in(page)
    page.goto("/configs/new")
    local, k8s = page.locator('[data-backend="local"]'), page.locator('[data-backend="kubernetes"]')
    assert local.is_visible() and not k8s.is_visible()  # local is the default
    # A Kubernetes config: its fields appear when chosen, with an error next to a wrong one.
    page.locator("input[name=name]").fill("pod-job")
    page.get_by_label("Repository (local path or git URL)").fill(str(source))
    page.get_by_label("Backend").select_option("kubernetes")
    assert k8s.is_visible() and not local.is_visible()
    page.get_by_label("Namespace").fill("Not A Namespace")
    page.get_by_label("Runtime class").fill("gvisor")
    page.get_by_label("Agent image").fill("registry.example/agent:1.2")
    page.get_by_label("Credentials").select_option("shared-home")
    page.get_by_label("Limits: memory").fill("8Gi")
    page.get_by_label("Node selector (YAML or JSON mapping)").fill("pool: agents")
    page.get_by_label("Tolerations (YAML or JSON list)").fill(
        "- {key: agents, operator: Exists, effect: NoSchedule}"
    )
    k8s.scroll_into_view_if_needed()
    shot(page, "config-form-kubernetes")
    page.get_by_role("button", name="Save").click()
    assert page.locator("#k8s_namespace-error").is_visible()
    assert k8s.is_visible() and not local.is_visible()  # still the chosen backend's fields
    page.locator("#k8s_namespace-error").scroll_into_view_if_needed()
    shot(page, "config-form-kubernetes-error")
    page.get_by_label("Namespace").fill("agents")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/configs")
    # A local config with CPU and process limits.
    page.goto("/configs/new")
    page.locator("input[name=name]").fill("box-job")
    page.get_by_label("Repository (local path or git URL)").fill(str(source))
    page.get_by_label("CPU limit (cores)").fill("1.5")
    page.get_by_label("Process limit").fill("256")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/configs")
    with server.client() as c:
        pod = c.get("/api/configs/pod-job").json()["backend"]
        box = c.get("/api/configs/box-job").json()["backend"]
    assert pod["type"] == "kubernetes"
    assert (pod["namespace"], pod["runtime_class"], pod["image"], pod["credentials"]) == (
        "agents", "gvisor", "registry.example/agent:1.2", "shared-home"
    )  # fmt: skip
    assert pod["resources"]["limits"]["memory"] == "8Gi"
    assert pod["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi",
                                            "ephemeral_storage": None}  # fmt: skip
    assert pod["node_selector"] == {"pool": "agents"}
    assert pod["tolerations"][0]["key"] == "agents"
    assert box["type"] == "local"
    assert (box["sandbox"]["cpus"], box["sandbox"]["pids"]) == (1.5, 256)
    assert box["sandbox"]["memory_mb"] == 4096 and box["sandbox"]["mode"] == "bwrap"


def test_dashboard_updates_live_and_stop_ends_a_long_run(
    phone: Any, server: Server, source: Path
) -> None:
    page = phone
    make_config(server, source, "sleeper", f"{fake.marker('sleep')} wait")
    sign_in(page)
    run_id = launch(server, "sleeper")  # launched elsewhere: the open dashboard picks it up
    row = page.locator(f'[data-run="{run_id}"]')
    row.locator(".badge-info").wait_for(timeout=30_000)
    server.wait_status(run_id, {"running"}, timeout=30)
    shot(page, "dashboard-running")
    row.locator("a").click()
    page.locator("details.tool").first.wait_for(timeout=60_000)  # sleeping in Bash now
    page.get_by_role("button", name="Stop").click()  # confirmation accepted by the handler
    page.locator("#run-status .badge-warning").wait_for(timeout=60_000)
    assert "stopped" in page.locator("#run-status").inner_text()
    shot(page, "run-stopped")
    assert server.wait_status(run_id, {"stopped"}, timeout=5)["status"] == "stopped"


def test_follow_a_run_that_finished_while_the_page_was_closed(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    page = phone
    marker = slow_scenario(fake_anthropic, "cockpit-closed", steps=2, delay=0.2)
    make_config(server, source, "closed", f"{marker} go")
    sign_in(page)
    run_id = launch(server, "closed")
    page.goto(f"/runs/{run_id}")
    page.locator("#stream[data-live]").wait_for(state="attached")
    page.goto("about:blank")  # closed while it works
    server.wait_status(run_id, {"succeeded"}, timeout=90)
    page.goto(f"/runs/{run_id}")
    page.locator(".result-card").wait_for()
    page.wait_for_function("document.getElementById('stream').dataset.live === 'ended'")
    assert page_seqs(page) == api_seqs(server, run_id)
    shot(page, "run-after-close")


def test_the_page_catches_up_after_the_server_restarts_midrun(
    phone: Any, server: Server, source: Path, fake_anthropic: fake.FakeAnthropic
) -> None:
    page = phone
    marker = slow_scenario(fake_anthropic, "cockpit-restart", steps=8, delay=0.7)
    make_config(server, source, "restart", f"{marker} go")
    sign_in(page)
    run_id = launch(server, "restart")
    page.goto(f"/runs/{run_id}")
    page.locator("details.tool").first.wait_for(timeout=60_000)
    server.stop()  # the SSE connection drops; the agent keeps working
    page.wait_for_function("document.getElementById('stream').dataset.live !== 'live'")
    time.sleep(1.5)
    server.start()  # same port, same data: the session cookie is still valid
    server.wait_status(run_id, {"succeeded"}, timeout=90)
    page.locator(".result-card").wait_for(timeout=30_000)
    page.wait_for_function("document.getElementById('stream').dataset.live === 'ended'")
    seqs = page_seqs(page)
    assert seqs == api_seqs(server, run_id)  # nothing missing, nothing twice
    assert len(seqs) == len(set(seqs))
    shot(page, "run-after-restart")


def test_real_server_rejects_unauthenticated_forged_and_csrf_less_requests(
    tmp_path: Path, claude_bin: str, fake_anthropic: fake.FakeAnthropic
) -> None:
    # Forward auth on, but only for a proxy that is not us (127.0.0.1 is untrusted here).
    srv = start_server(
        tmp_path, claude_bin, fake_anthropic.base_url,
        AGENTFARM_TRUSTED_PROXIES="10.99.0.1", AGENTFARM_FORWARD_AUTH_HEADER="Remote-User",
    )  # fmt: skip
    try:
        assert srv.cli("user", "add", "ada", input=PASSWORD + "\n").returncode == 0
        with httpx.Client(base_url=srv.url, follow_redirects=False) as anon:
            assert anon.get("/").status_code == 303
            assert anon.get("/api/runs").status_code == 401
            assert anon.get("/", headers={"Remote-User": "ada"}).status_code == 303
            assert anon.get("/api/runs", headers={"Remote-User": "ada"}).status_code == 401
            form = anon.get("/login").text
            token = form.split('name="csrf_token" value="')[1].split('"')[0]
            signed = anon.post(
                "/login", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
            )
            assert signed.status_code == 303
            refused = anon.post("/configs/new", data={"name": "x", "repo": "/r"})
            assert refused.status_code == 403
            assert anon.post("/api/configs", json={"name": "x", "repo": "/r"}).status_code == 403
    finally:
        srv.stop()


def named_token(srv: Server, name: str, password: str) -> str:
    """Sign in as ``name`` over plain HTTP and make a named token on the settings page."""
    with httpx.Client(base_url=srv.url, follow_redirects=False) as browser:
        form = browser.get("/login").text
        csrf = form.split('name="csrf_token" value="')[1].split('"')[0]
        signed = browser.post(
            "/login", data={"username": name, "password": password, "csrf_token": csrf}
        )
        assert signed.status_code == 303, signed.text
        page = browser.get("/settings").text
        csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
        made = browser.post("/settings/tokens", data={"name": "mine", "csrf_token": csrf})
        assert made.status_code == 200, made.text
        return made.text.split('id="new-token" readonly value="')[1].split('"')[0]


def test_real_server_roles_hosts_docs_and_a_quiet_log(
    tmp_path: Path, claude_bin: str, fake_anthropic: fake.FakeAnthropic
) -> None:
    # A proxy on loopback with a shared secret: the one safe way to trust 127.0.0.1.
    srv = start_server(
        tmp_path, claude_bin, fake_anthropic.base_url,
        AGENTFARM_TRUSTED_PROXIES="127.0.0.1", AGENTFARM_FORWARD_AUTH_HEADER="Remote-User",
        AGENTFARM_FORWARD_AUTH_SECRET="proxy-secret-0123",
    )  # fmt: skip
    try:
        first = srv.cli("user", "add", "ada", input=PASSWORD + "\n")
        assert first.returncode == 0 and "admin ada created" in first.stdout, first.stderr
        second = srv.cli("user", "add", "bob", input=PASSWORD + "\n")
        assert second.returncode == 0 and "user bob created" in second.stdout, second.stderr
        bob = named_token(srv, "bob", PASSWORD)
        as_bob = {**srv.cli_env, "AGENTFARM_TOKEN": bob}
        cli = str(Path(sys.executable).with_name("agentfarm"))
        done = subprocess.run(
            [cli, "user", "add", "mallory"], env=as_bob, input=PASSWORD + "\n",
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "missing scope `admin`" in lines[0], done.stderr
        assert (
            subprocess.run(
                [cli, "ls"], env=as_bob, capture_output=True, text=True, timeout=60, check=False
            ).returncode
            == 0
        )  # an ordinary user's token still runs the farm
        with httpx.Client(base_url=srv.url, follow_redirects=False) as anon:
            rebound = anon.get("/api/health", headers={"Host": "rebound.example"})
            assert rebound.status_code == 421
            assert rebound.json()["error"]["code"] == "host_not_allowed"
            assert anon.get("/openapi.json").status_code == 401
            assert anon.get("/docs").json()["error"]["code"] == "unauthorized"
            forged = anon.get("/api/runs", headers={"Remote-User": "ada"})
            assert forged.status_code == 401  # loopback, but without the proxy's secret
            proxied = anon.get(
                "/api/runs",
                headers={"Remote-User": "ada", "X-Agentfarm-Proxy-Secret": "proxy-secret-0123"},
            )
            assert proxied.status_code == 200
    finally:
        srv.stop()
    log = (tmp_path / "server.log").read_text()
    assert "agentfarm listening" in log
    assert srv.env["AGENTFARM_TOKEN"] not in log  # the token never lands in the server's log
    assert "proxy-secret-0123" not in log
