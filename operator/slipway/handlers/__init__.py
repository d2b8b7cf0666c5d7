"""kopf decorators only: the glue between events and reconcilers (importing this registers them).

The import order is the order kopf runs the start-up handlers in (one cycle, in registration
order): the RBAC check, then ``startup.configure`` (settings, clients, the HTTP server), then what
needs them, the alert intake (which needs the Driver and the registry sync), and last the heap's freeze
(:mod:`slipway.runtime`), once everything start-up builds exists. In that order no
start-up handler waits for another, so kopf logs no "failed temporarily" retry at start-up.
"""

# isort: off
from slipway.handlers import rbac
from slipway.handlers import startup
from slipway.handlers import watch_cache
from slipway.handlers import modeldeployment
from slipway.handlers import modelversion
from slipway.handlers import notifications
from slipway.handlers import trainingrun
from slipway.handlers import alerts
from slipway.handlers import heap

# isort: on

__all__ = [
    "alerts",
    "heap",
    "modeldeployment",
    "modelversion",
    "notifications",
    "rbac",
    "startup",
    "trainingrun",
    "watch_cache",
]
