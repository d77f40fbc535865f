"""The ``kubernetes`` backend: one pod per run.

``config`` merges a config's backend settings
(:class:`~agentfarm.domain.backend_config.KubernetesSpec`) with the server's ``AGENTFARM_K8S_*``
defaults, ``manifests`` builds the pod and Secret (pure, unit-tested),
``status`` maps pod states to notices and exits (pure), ``api`` is the thin async client layer,
``handle`` follows one run and ``backend`` puts them together. Only this package imports
``kubernetes_asyncio``, and only from ``api``, so the pure modules load without the optional
dependency.
"""

from __future__ import annotations

from agentfarm.backends.kubernetes.config import PodConfig, resolve

__all__ = ["PodConfig", "resolve"]
