"""``shopserve promote`` and ``shopserve rollback``: one canary step by hand, through the Kubernetes API.

The logic is ``pipeline.rollout.kube``; this module only parses arguments and prints the outcome.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.rollout.kube import (
    MODES,
    InferenceServiceTraffic,
    KubeError,
    TrafficChange,
    api_client_from_config,
)

_EPILOG_HELM = """\
These steps patch the live InferenceService, not the Helm release: afterwards set the values to
match (promotion: <component>.storageUri to the candidate and canary.enabled=false; roll back:
canary.enabled=false), or the next `helm upgrade` puts the canary back."""

_PROMOTE_HELP = f"""\
Move a canary's traffic share, or promote it.

With --percent below 100 (a step): the canary takes that share.
  Knative:  spec.<component>.canaryTrafficPercent = N            (JSON merge patch)
  Standard: spec.canary[<entry>].trafficPercent = N                (JSON patch)
With --percent 100 (the default): the candidate becomes the stable version.
  Knative:  canaryTrafficPercent removed; the latest revision takes 100%
  Standard: the spec.canary entry's predictor replaces spec.predictor (keeping the stable
            predictor's scaling fields where the entry has none); the entry goes

Every patch carries the resourceVersion it was built from, so a concurrent change is a conflict
(HTTP 409), never overwritten: a step re-reads and retries once, a promotion fails.

{_EPILOG_HELM}

Examples:
  shopserve promote -i search -n shopserve --percent 25 --dry-run
  shopserve promote -i mf-recall -n shopserve
"""

_ROLLBACK_HELP = f"""\
Send all of a component's traffic back to its stable version.

  Knative:  spec.<component>.canaryTrafficPercent = 0: the previous rolled-out revision takes 100%,
            the candidate revision stays, idle (JSON merge patch)
  Standard: the spec.canary entry is removed, and with it the canary's Deployment (JSON patch)

{_EPILOG_HELM}

Example:
  shopserve rollback -i search -n shopserve --component transformer
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--isvc", required=True, metavar="NAME",
                        help="the InferenceService (search, mf-recall)")
    parser.add_argument("-n", "--namespace", required=True, metavar="NS", help="its namespace")
    parser.add_argument("--component", default="predictor", choices=("predictor", "transformer"),
                        help="the component whose canary moves (default: predictor; the search "
                             "transformer's canary exists in Knative mode only)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="KServe deployment mode; default: read from the InferenceService's "
                             "serving.kserve.io/deploymentMode annotation (a contradicting --mode is "
                             "refused)")
    parser.add_argument("--canary-name", default=None, metavar="NAME",
                        help="Standard mode: the spec.canary entry's predictor name (default: the "
                             "only entry)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the InferenceService and print the exact PATCH (method, path, content "
                             "type, body) without sending it")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config, else the in-cluster "
                             "service account)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def _traffic(args: argparse.Namespace) -> InferenceServiceTraffic:
    return InferenceServiceTraffic(
        args.isvc, args.namespace, component=args.component, mode=args.mode, dry_run=args.dry_run,
        api_client=api_client_from_config(args.kubeconfig, args.context), canary_name=args.canary_name)


def _report(args: argparse.Namespace, change: TrafficChange) -> None:
    verb = {"set": "step", "promote": "promote", "rollback": "rollback"}[change.action]
    print(f"{verb} {args.namespace}/{args.isvc} {args.component}: {change.describe()}")


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not in 0..100")
    return value


def _cmd_promote(args: argparse.Namespace) -> int:
    try:
        traffic = _traffic(args)
        change = traffic.promote() if args.percent == 100 else traffic.set_canary_percent(args.percent)
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report(args, change)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    try:
        change = _traffic(args).rollback()
    except KubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report(args, change)
    return 0


def register(sub: Any) -> None:
    """Add ``promote`` and ``rollback`` to the ``shopserve`` subcommands.

    Args:
        sub: The object ``ArgumentParser.add_subparsers()`` returned.
    """
    fmt = argparse.RawDescriptionHelpFormatter
    promote = sub.add_parser("promote", help="move a canary to N%% of the traffic, or promote it (N=100)",
                             description=_PROMOTE_HELP, formatter_class=fmt)
    _common(promote)
    promote.add_argument("--percent", type=_percent, default=100, metavar="N",
                         help="the canary's share after this step, 0..100 (default 100: promote)")
    promote.set_defaults(func=_cmd_promote)

    rollback = sub.add_parser("rollback", help="send all traffic back to the stable version",
                              description=_ROLLBACK_HELP, formatter_class=fmt)
    _common(rollback)
    rollback.set_defaults(func=_cmd_rollback)
