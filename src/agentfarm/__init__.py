"""agentfarm: a self-hosted farm of autonomous coding agents."""

__version__ = "0.1.0"
