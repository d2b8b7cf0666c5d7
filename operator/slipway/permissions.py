"""The RBAC the operator's watches need (list, watch of each watched kind) and what lacking it breaks; pure.

kopf runs no handler at all until every kind an indexing handler (``@kopf.index``) watches has
delivered its initial listing. An operator whose Role cannot list or watch one of them therefore
does nothing, silently, for ever. The start-up check (:mod:`slipway.handlers.rbac`) asks the
API server (SelfSubjectAccessReview) for each :class:`Access` :func:`required` names and turns the
refused ones into messages (:func:`problems`) that name the permission and what it breaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

VERBS = ("list", "watch")
"""What kopf's watch of a kind needs: an initial listing, then a watch."""

GLOB = frozenset("*?[!")
"""Characters that make a ``--namespace`` a pattern (kopf matches it against the cluster's namespaces)."""

NOTHING_RUNS = "kopf runs no handler until every indexed kind is listed: the operator would do nothing"


@dataclass(frozen=True, order=True)
class Watched:
    """A kind the operator's handlers watch; ``indexed`` when an indexing handler watches it."""

    group: str
    version: str
    resource: str
    indexed: bool = False

    @property
    def name(self) -> str:
        """``resource.group`` as RBAC and ``kubectl auth can-i`` spell it (``resource`` alone in the core group)."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


@dataclass(frozen=True, order=True)
class Access:
    """One permission: ``verb`` on ``resource`` of ``group`` in ``namespace`` ("": all namespaces)."""

    verb: str
    group: str
    resource: str
    namespace: str = ""

    def describe(self) -> str:
        """E.g. ``list deployments.apps in all namespaces``, ``watch jobs.batch in namespace ml``."""
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f"in namespace {self.namespace}" if self.namespace else "in all namespaces"
        return f"{self.verb} {what} {where}"


def merge(kinds: Iterable[Watched]) -> list[Watched]:
    """One entry per (group, version, resource), indexed if any handler of it indexes; sorted."""
    indexed: dict[tuple[str, str, str], bool] = {}
    for k in kinds:
        key = (k.group, k.version, k.resource)
        indexed[key] = indexed.get(key, False) or k.indexed
    return sorted(Watched(g, v, r, i) for (g, v, r), i in indexed.items())


def scopes(namespaces: Sequence[str]) -> tuple[list[str], list[str]]:
    """The namespaces to check ([""]: cluster-wide, when none is given) and the patterns that cannot be checked."""
    if not namespaces:
        return [""], []
    names = sorted({n for n in namespaces if not GLOB & set(n)})
    patterns = sorted({n for n in namespaces if GLOB & set(n)})
    return names, patterns


def required(kinds: Iterable[Watched], namespaces: Sequence[str]) -> list[Access]:
    """Every list and watch the watches need: cluster-wide with no namespaces, else in each named namespace."""
    where, _ = scopes(namespaces)
    return [Access(verb, k.group, k.resource, ns) for k in merge(kinds) for ns in where for verb in VERBS]


def breaks(kind: Watched) -> str:
    """What lacking list or watch on this kind breaks."""
    if kind.indexed:
        return NOTHING_RUNS
    return f"kopf cannot watch {kind.name}: its handlers never run"


def problems(kinds: Iterable[Watched], missing: Iterable[Access]) -> list[str]:
    """One message per refused permission: the permission, then what it breaks (sorted by permission)."""
    by_resource = {(k.group, k.resource): k for k in merge(kinds)}
    out = []
    for access in sorted(set(missing)):
        kind = by_resource.get((access.group, access.resource))
        effect = breaks(kind) if kind else "a watched kind"
        out.append(f"{access.describe()} ({effect})")
    return out


def summary(messages: Sequence[str]) -> str:
    """The one error that stops the start-up: how many permissions lack, each, and the fix."""
    return (
        f"{len(messages)} RBAC permission(s) missing: {'; '.join(messages)}. "
        "Grant them (the Helm chart's ClusterRole/Roles do) and restart the operator."
    )
