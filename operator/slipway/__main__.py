"""`python -m slipway`: run the operator (kopf) against the cluster of the current kubeconfig."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the few flags kopf needs and run the operator until interrupted."""
    import kopf

    import slipway.handlers  # noqa: F401  (registers the handlers)

    parser = argparse.ArgumentParser(prog="python -m slipway", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable); default: the whole cluster",
    )
    parser.add_argument("--peering", default="", help="kopf peering object name (for more than one replica)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=list(args.namespace),
        standalone=not args.peering,
        peering_name=args.peering or None,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
