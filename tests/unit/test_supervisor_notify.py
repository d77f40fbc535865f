"""Notifications on the fake backend: a run that ends is reported to Apprise ``json://``
targets on a loopback endpoint (farm-wide and a config's own), with a short message and the
run's link; a dead or hanging target changes nothing about the run; URLs never reach the log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfarm.backends.base import ExitInfo
from agentfarm.backends.fake import FakeBackend, Step
from agentfarm.domain import launch, models
from agentfarm.store import Store
from agentfarm.store.secrets import SecretStore
from agentfarm.supervisor import notify
from agentfarm.supervisor.apprise_targets import Target
from agentfarm.supervisor.runs import Supervisor
from tests.fakes.json_endpoint import JsonEndpoint
from tests.unit.conftest import make_settings
from tests.unit.supervisor_kit import GUARD, ended

PUBLIC = "https://farm.example.org"
TOKEN_IN_URL = "tok3n-SEKRET-value-42"


def failing_script(run: models.Run, command: launch.AgentCommand) -> list[Step]:
    return [
        Step("started", json.dumps({"pid": 0}).encode()),
        Step("stderr", b"fatal: the repository went away\nsecond line of the story"),
        Step("exit", exit=ExitInfo(exit_code=3)),
    ]


async def run_once(sup: Supervisor, store: Store, **spec: object) -> models.Run:
    await sup.start()
    run = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="fix it", **spec))  # type: ignore[arg-type]
    return await ended(store, run.id)


async def test_a_run_that_succeeds_is_reported_with_its_cost_turns_and_link(
    store: Store, supervisors: Callable[..., Supervisor], endpoint: JsonEndpoint
) -> None:
    sup = supervisors(notify_urls=endpoint.url("/farm"), public_url=PUBLIC)
    run = await run_once(sup, store)
    assert run.status is models.RunStatus.succeeded
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    assert got.path == "/farm"
    message = got.json()
    assert message["title"] == f"agentfarm: run {run.id} succeeded"
    assert message["type"] == "success"
    lines = message["message"].splitlines()
    assert lines == [
        "succeeded: one-off run, agent claude",
        "$0.0012, 1 turn",
        f"{PUBLIC}/runs/{run.id}",
    ]


async def test_a_failed_run_says_the_first_line_of_its_error(
    store: Store,
    supervisors: Callable[..., Supervisor],
    backend: FakeBackend,
    endpoint: JsonEndpoint,
) -> None:
    backend.script = failing_script
    sup = supervisors(notify_urls=endpoint.url("/farm"))
    run = await run_once(sup, store)
    assert run.status is models.RunStatus.failed
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    message = got.json()
    assert message["type"] == "failure"
    assert message["title"] == f"agentfarm: run {run.id} failed"
    lines = message["message"].splitlines()
    assert lines[0] == "failed: one-off run, agent claude"
    assert lines[-1].startswith("error: ")
    assert run.error is not None and lines[-1] == f"error: {run.error.splitlines()[0]}"
    assert "/runs/" not in message["message"]  # no public_url: no link


async def test_a_config_s_notify_secrets_are_told_besides_the_farm_wide_targets(
    tmp_path: Path, store: Store, supervisors: Callable[..., Supervisor], endpoint: JsonEndpoint
) -> None:
    secrets = SecretStore(tmp_path / "data" / "secrets.json")
    secrets.set("NOTIFY_URLS", endpoint.url("/from-secret"))
    secrets.set("TEAM_HOOK", f"{endpoint.url('/team-a')}, {endpoint.url('/team-b')}")
    sup = supervisors(notify_urls=endpoint.url("/farm"))
    await run_once(sup, store, notify_secrets=["TEAM_HOOK"])
    got = await asyncio.to_thread(endpoint.wait_for, 4)
    assert sorted(r.path for r in got) == ["/farm", "/from-secret", "/team-a", "/team-b"]


async def test_stopped_runs_are_not_sent_by_default_but_can_be(
    store: Store, supervisors: Callable[..., Supervisor], endpoint: JsonEndpoint
) -> None:
    quiet = supervisors(notify_urls=endpoint.url("/farm"))
    assert not quiet.notifier.wants(notify.Kind.run_stopped)
    assert quiet.notifier.wants(notify.Kind.run_finished)
    assert quiet.notifier.wants(notify.Kind.test)
    told = supervisors(notify_urls=endpoint.url("/farm"), notify_events="run_stopped")
    assert told.notifier.wants(notify.Kind.run_stopped)
    assert not told.notifier.wants(notify.Kind.run_finished)


async def test_a_stopped_run_then_a_finished_one_sends_only_the_finished_one(
    store: Store,
    supervisors: Callable[..., Supervisor],
    backend: FakeBackend,
    endpoint: JsonEndpoint,
) -> None:
    sup = supervisors(notify_urls=endpoint.url("/farm"))
    await sup.start()
    first = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="one"))
    await sup.stop_run(first.id)
    assert (await ended(store, first.id)).status is models.RunStatus.stopped
    second = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="two"))
    assert (await ended(store, second.id)).status is models.RunStatus.succeeded
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    assert got.json()["title"] == f"agentfarm: run {second.id} succeeded"


async def test_a_dead_target_changes_nothing_and_its_url_stays_out_of_the_log(
    store: Store,
    supervisors: Callable[..., Supervisor],
    endpoint: JsonEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = JsonEndpoint()
    dead_url = dead.url(f"/hook/{TOKEN_IN_URL}?token={TOKEN_IN_URL}")
    dead.close()  # nothing listens on its port any more
    sup = supervisors(notify_urls=f"{dead_url} {endpoint.url('/alive')}")
    run = await run_once(sup, store)
    assert run.status is models.RunStatus.succeeded
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    assert got.path == "/alive"
    # The failure is logged (scheme and host), once the send has given up.
    async with asyncio.timeout(GUARD):
        while "failed" not in caplog.text:
            await asyncio.sleep(0.01)
    assert "json://127.0.0.1" in caplog.text
    assert TOKEN_IN_URL not in caplog.text
    assert run.status is (await store.get_run(run.id)).status


async def test_a_hanging_target_does_not_hold_up_the_run_s_end(
    store: Store, supervisors: Callable[..., Supervisor], endpoint: JsonEndpoint
) -> None:
    sup = supervisors(notify_urls=endpoint.url("/hang"), notify_timeout_seconds=60)
    await sup.start()
    run = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="fix it"))
    # The notification is held by the endpoint: by then the run has ended and is stored.
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    assert got.path == "/hang"
    done = await store.get_run(run.id)
    assert done.status is models.RunStatus.succeeded
    assert done.finished_at is not None
    # A second run ends too while the first notification still hangs.
    second = await sup.submit(models.AgentSpec(repo="/srv/repo", prompt="again"))
    assert (await ended(store, second.id)).status is models.RunStatus.succeeded
    endpoint.release()


async def test_a_notification_that_outlives_its_time_limit_is_reported_as_such(
    tmp_path: Path, endpoint: JsonEndpoint
) -> None:
    settings = make_settings(
        tmp_path / "data", notify_urls=endpoint.url("/hang"), notify_timeout_seconds=0.2
    )
    notifier = notify.Notifier(settings, SecretStore(settings.secrets_path))
    try:
        note = notify.Notification(kind=notify.Kind.test, title="t", body="b")
        [outcome] = await notifier.send(note)
    finally:
        endpoint.release()
        await notifier.close()
    assert outcome.target == "json://127.0.0.1"
    assert not outcome.ok


def test_for_run_says_nothing_of_a_run_not_ended() -> None:
    settings = make_settings(Path("/nonexistent"))
    run = models.Run(spec=models.AgentSpec(repo="/r", prompt="p"), status=models.RunStatus.running)
    assert notify.for_run(settings, run) is None


def test_for_run_cuts_a_long_error_and_counts_turns() -> None:
    settings = make_settings(Path("/nonexistent"), public_url=PUBLIC + "/")
    run = models.Run(
        spec=models.AgentSpec(repo="/r", prompt="p", notify_secrets=["TEAM"]),
        config_name="nightly",
        status=models.RunStatus.lost,
        cost_usd=1.234,
        num_turns=12,
        error="x" * 500 + "\nsecond",
    )
    note = notify.for_run(settings, run)
    assert note is not None
    assert note.kind is notify.Kind.run_failed
    assert note.secrets == ("TEAM",)
    lines = note.body.splitlines()
    assert lines[0] == "lost: nightly, agent claude"
    assert lines[1] == "$1.2340, 12 turns"
    assert len(lines[2]) == len("error: ") + notify.ERROR_CHARS
    assert note.url == f"{PUBLIC}/runs/{run.id}"
    assert note.push_payload()["url"] == f"/runs/{run.id}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("json://127.0.0.1:8000/hook?token=abcdef", "json://127.0.0.1"),
        ("ntfys://ntfy.sh/secret-topic", "ntfys://ntfy.sh"),
        ("ntfy://secret-topic", "ntfy://"),
        ("tgram://123456789:AAbbccddeeffgg/5555", "tgram://"),
        ("discord://1234567/abcdefTOKEN", "discord://"),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://"),
        ("pover://userkey@tokenvalue", "pover://"),
        ("mailtos://user:pa55word@smtp.example.org", "mailtos://smtp.example.org"),
        ("jsons://hooks.example.org/x/y", "jsons://hooks.example.org"),
    ],
)
def test_a_target_shows_its_scheme_and_a_real_host_only(url: str, shown: str) -> None:
    target = Target(url, "NOTIFY_URLS")
    assert target.shown == shown
    masked = target.mask(f"could not send to {url} ({url.partition('://')[2]})")
    secret_bits = [p for p in url.partition("://")[2].replace("?", "/").split("/") if p]
    host = shown.partition("://")[2]
    for bit in secret_bits:
        if bit != host and not bit.startswith(host + ":"):
            assert bit not in masked, (bit, masked)


def test_an_estimated_cost_says_so() -> None:
    settings = make_settings(Path("/nonexistent"))
    run = models.Run(
        spec=models.AgentSpec(repo="/r", prompt="p", agent="codex"),
        status=models.RunStatus.succeeded,
        cost_usd=0.5,
    )
    note = notify.for_run(settings, run)
    assert note is not None
    assert note.body.splitlines()[1] == "≈ $0.5000 (estimate)"


def test_the_pipeline_s_pull_request_message_links_the_pull_request_and_the_run() -> None:
    settings = make_settings(Path("/nonexistent"), public_url=PUBLIC)
    note = notify.for_pull_request(
        settings, forge="gh", repo="me/app", number=7, pr_number=12,
        pr_url="https://github.com/me/app/pull/12", run_id="0123456789ab", secrets=("GH_HOOK",),
    )  # fmt: skip
    assert note.kind is notify.Kind.pull_request_opened
    assert note.title == "agentfarm: pull request #12 for me/app#7"
    assert note.text().splitlines() == [
        "me/app#7: pull request #12 opened (gh)",
        f"run: {PUBLIC}/runs/0123456789ab",
        "https://github.com/me/app/pull/12",
    ]
    assert note.forge == "gh" and note.secrets == ("GH_HOOK",)


async def test_a_secret_a_config_names_but_nobody_stored_is_skipped_with_a_warning(
    store: Store,
    supervisors: Callable[..., Supervisor],
    endpoint: JsonEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = supervisors(notify_urls=endpoint.url("/farm"))
    run = await run_once(sup, store, notify_secrets=["NOT_STORED"])
    assert run.status is models.RunStatus.succeeded
    [got] = await asyncio.to_thread(endpoint.wait_for, 1)
    assert got.path == "/farm"
    assert "no secret named NOT_STORED" in caplog.text


def test_a_config_refuses_a_url_where_a_secret_name_belongs() -> None:
    with pytest.raises(ValueError, match="name of a stored secret, not a URL"):
        models.AgentSpec(repo="/r", notify_secrets=["slack://a/b/c"])
    with pytest.raises(ValueError, match="not a secret name"):
        models.AgentSpec(repo="/r", notify_secrets=["has space"])
