"""Backends: where and how an agent process runs (local sandbox, Kubernetes pod, fake)."""
