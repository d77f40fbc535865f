"""A small synchronous client of the agentfarm API."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from agentfarm.settings import Settings
from agentfarm.settings_base import default_data_dir

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """One line for the user; the CLI prints it and exits non-zero."""


def resolve_token() -> str | None:
    token = os.environ.get("AGENTFARM_TOKEN")
    if token:
        return token
    data_dir = os.environ.get("AGENTFARM_DATA_DIR")
    path = Settings.model_construct(
        data_dir=Path(data_dir) if data_dir else default_data_dir()
    ).token_path
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("AGENTFARM_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or resolve_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach the agentfarm server at {self.url}: start it with `make run` "
                "or `agentfarm serve`, or set AGENTFARM_URL"
            ) from exc
        except httpx.HTTPError as exc:
            raise ClientError(f"talking to {self.url} failed: {exc}") from exc
        if response.status_code == 401:
            raise ClientError(
                "the server rejected the API token: set AGENTFARM_TOKEN (on the server's "
                "machine `agentfarm token` prints it)"
            )
        if response.status_code >= 400:
            raise ClientError(_error_message(response))
        if response.is_redirect:  # e.g. an id like `../..` that led the path out of the API
            raise ClientError(_not_api(self.url, method, path, response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(_not_api(self.url, method, path, response)) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def stream_events(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Follow a run's events live; reconnects after a dropped connection."""
        last = after
        failures = 0
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/api/runs/{run_id}/events",
                    params={"after": last},
                    headers={"Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise ClientError(_error_message(source.response))
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.event == "end":
                            return
                        if not sse.data:
                            continue
                        event: dict[str, Any] = sse.json()
                        last = int(event["seq"])
                        yield event
                return
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                failures += 1
                if failures > 30:
                    raise ClientError(f"lost the event stream from {self.url}: {exc}") from exc
                time.sleep(min(2.0, 0.2 * failures))


def _not_api(url: str, method: str, path: str, response: httpx.Response) -> str:
    return (
        f"{url} answered {method} {path} with HTTP {response.status_code}, not the API's JSON: "
        "check the id or name you gave, and AGENTFARM_URL"
    )


def _error_message(response: httpx.Response) -> str:
    """One line: the server's ``{"error": {"code", "message"}}`` message, or what came back
    instead (a proxy's page, say)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
    else:
        text = response.text.strip()
        message = f"HTTP {response.status_code} from {response.url.host}"
        message += f": {text[:200]}" if text else ""
    return " ".join(message.split())
