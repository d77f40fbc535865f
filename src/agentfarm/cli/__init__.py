"""The `agentfarm` command: a client of the HTTP API (plus `serve`, which starts it)."""
