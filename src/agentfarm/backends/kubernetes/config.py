"""The effective pod settings of a run: the config's kubernetes settings over server defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agentfarm.domain import backend_config, errors, models
from agentfarm.settings import Settings


@dataclass(frozen=True)
class PodConfig:
    namespace: str
    image: str
    instance: str
    runtime_class: str | None = None
    resources: backend_config.K8sResources = field(default_factory=backend_config.K8sResources)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[backend_config.K8sToleration, ...] = ()
    credentials: str = "token"
    service_account: str | None = None
    credentials_claim: str = "claude-home"
    grace_seconds: int = 10
    forgejo_url: str | None = None
    #: Seconds the pod waits after its agent exits for resume or finish (0: it does not).
    resume_wait: float = 0.0


def resolve(spec: models.AgentSpec, settings: Settings) -> PodConfig:
    """Merge ``spec.backend`` with the server's defaults; raise if no image is known."""
    k8s = spec.backend
    if not isinstance(k8s, backend_config.KubernetesSpec):
        raise errors.ConfigurationError(f"a {k8s.type} run is not for the kubernetes backend")
    image = k8s.image or settings.k8s_image
    if not image:
        raise errors.ConfigurationError(
            "no agent image for the kubernetes backend: set AGENTFARM_K8S_IMAGE on the server "
            "or `backend.image` in the config"
        )
    return PodConfig(
        namespace=k8s.namespace or settings.k8s_namespace,
        image=image,
        instance=settings.k8s_instance,
        runtime_class=k8s.runtime_class or settings.k8s_runtime_class,
        resources=k8s.resources,
        node_selector=dict(k8s.node_selector),
        tolerations=tuple(k8s.tolerations),
        credentials=k8s.credentials,
        service_account=k8s.service_account,
        credentials_claim=settings.k8s_credentials_claim,
        grace_seconds=max(1, math.ceil(settings.stop_grace_seconds)),
        forgejo_url=settings.k8s_forgejo_url,
        resume_wait=settings.k8s_resume_wait_seconds,
    )
