"""SQLite persistence: configs, runs and events (``Store``), and the secrets file."""

from agentfarm.store.store import Store

__all__ = ["Store"]
