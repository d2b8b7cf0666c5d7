"""What the operator may do, asked of the API server: SelfSubjectAccessReviews, and which kinds it serves."""

from __future__ import annotations

from collections.abc import Iterable

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from slipway.clients.kube import REQUEST_TIMEOUT
from slipway.permissions import Access, Watched


def allowed(api: client.ApiClient, access: Access, timeout: tuple[float, float] = REQUEST_TIMEOUT) -> bool:
    """Whether the API server's authorizers allow the caller ``access`` (raises if it cannot tell: no answer)."""
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=access.verb,
                group=access.group,
                resource=access.resource,
                namespace=access.namespace or None,
            )
        )
    )
    answer = client.AuthorizationV1Api(api).create_self_subject_access_review(review, _request_timeout=timeout)
    return bool(answer.status and answer.status.allowed)


def refused(api: client.ApiClient, accesses: Iterable[Access]) -> list[Access]:
    """The accesses the API server refuses, one review each (raises on the first that gets no answer)."""
    return [a for a in accesses if not allowed(api, a)]


def served(api: client.ApiClient, kinds: Iterable[Watched]) -> list[Watched]:
    """The kinds the API server serves (API discovery); kopf does not watch the others (e.g. a CRD not installed)."""
    dynamic = DynamicClient(api)
    out = []
    for kind in kinds:
        api_version = f"{kind.group}/{kind.version}" if kind.group else kind.version
        try:
            dynamic.resources.get(api_version=api_version, name=kind.resource)
        except ResourceNotFoundError:
            continue
        out.append(kind)
    return out
