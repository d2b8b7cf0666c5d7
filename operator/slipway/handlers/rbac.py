"""kopf glue of the start-up RBAC check: the operator stops at once, naming each list or watch its Role lacks.

kopf runs no handler at all until every indexed kind has delivered its initial listing, so an
operator that may not list or watch one of them (a hand-made Role without ``apps`` Deployments,
say) would otherwise run for ever doing nothing, with nothing in its log. The kinds checked are
those of the handlers registered with kopf (every ``@kopf.index``, ``@kopf.on.event`` and change
handler), so a new handler is checked without a list to keep up to date; the scope is the
``--namespace`` flags (none: the whole cluster). A kind the API server does not serve (a CRD not
installed) is not checked: kopf does not watch it either. An API server that does not answer
the reviews delays the start-up a little, then the operator starts without the check.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from slipway.clients.access import refused, served
from slipway.clients.kube import KUBE_ERRORS, error_message, load_api_client, off_loop
from slipway.permissions import Watched, merge, problems, required, scopes, summary

ATTEMPTS = 3
"""Tries of the check when the API server does not answer it, before starting without it."""
RETRY_DELAY = 2.0
NO_ANSWER: tuple[type[Exception], ...] = (*KUBE_ERRORS, OSError)
"""The check could not be made (refused or unanswered reviews, no connection): not a missing permission."""


def watched_kinds(registry: kopf.OperatorRegistry) -> list[Watched]:
    """Every kind a registered resource handler watches, indexed if an indexing handler does (kopf's registry)."""
    kinds = []
    indexing = registry._indexing.get_all_handlers()  # kopf keeps its registries private; no public listing
    others = [
        *registry._watching.get_all_handlers(),
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    for handler, indexed in [(h, True) for h in indexing] + [(h, False) for h in others]:
        selector = handler.selector
        if selector is None:
            continue
        resource = selector.plural or selector.any_name
        if isinstance(resource, str) and selector.version is not None:
            kinds.append(Watched(selector.group or "", selector.version, resource, indexed))
    return merge(kinds)


@kopf.on.startup()
async def check_rbac(memo: Any, retry: int, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Ask the API server whether the operator may list and watch what it watches; stop with the missing ones."""
    namespaces = [str(n) for n in getattr(memo, "watch_namespaces", ()) or ()]
    patterns = scopes(namespaces)[1]
    if patterns:
        logger.warning("RBAC check: namespace patterns %s are not checked (kopf resolves them later)", patterns)
    kinds = watched_kinds(kopf.get_default_registry())
    api = load_api_client()
    try:
        kinds = await off_loop(served, api, kinds)
        missing = await off_loop(refused, api, required(kinds, namespaces))
    except NO_ANSWER as exc:
        if retry + 1 < ATTEMPTS:
            raise kopf.TemporaryError(f"RBAC check: {error_message(exc)}", delay=RETRY_DELAY) from exc
        logger.warning("RBAC check: no answer from the API server (%s); starting without it", error_message(exc))
        return
    finally:
        api.close()
    messages = problems(kinds, missing)
    for message in messages:
        logger.error("missing RBAC permission: %s", message)
    if messages:
        raise kopf.PermanentError(summary(messages))
    logger.info("RBAC check: list and watch granted on %s", ", ".join(k.name for k in kinds))
