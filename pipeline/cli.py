"""``shopserve``: the lifecycle command line.

Subcommands (``shopserve <command> --help`` for each):

* ``data``: generate the seeded catalog/behaviour/query world into a folder;
* ``train recall``: tune, train, evaluate and package the MF recall component;
* ``build-demo``: build the whole demo bundle (``make up`` runs it when the bundle is missing);
* ``up``: start the local stack on a bundle, wait until ready, show a sample request, restart a
  component that dies (giving up after repeated crashes), stop on Ctrl-C or SIGTERM;
* ``train ranker``, ``optimize ranker``, ``evaluate``, ``package``: one pipeline step each;
* ``pipeline run``: data -> train -> optimise -> evaluate -> package, cached and resumable;
* ``bundles list|show|diff|verify``: the bundle registry and lineage;
* ``deploy``: helm upgrade --install a bundle into dev, staging or prod (``--dry-run`` renders).
* ``promote``, ``rollback``: one canary traffic step through the Kubernetes API (``pipeline.rollout.kube``);
* ``loadtest``, ``gate``: locust against a stack, the canary gate (``--local`` rehearses it);
* ``monitor``: drift and SLO monitoring of a running stack;
* ``drill``, ``soak``: fault drills and a soak of the supervised local stack under load.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Every command group, by job. Each module has ``register(sub)``, which takes the
#: ``add_subparsers()`` object and adds its parsers with ``set_defaults(func=...)``; the command's
#: logic lives beside its parser. This file only assembles them: the one way to add a command.
COMMAND_MODULES: tuple[str, ...] = (
    "pipeline.lifecycle.commands",   # data, train, optimise, evaluate, package, build-demo
    "pipeline.lifecycle.run",        # pipeline run|status
    "pipeline.lifecycle.registry",   # bundles list|show|diff|verify
    "pipeline.local",                # up
    "pipeline.rollout.deploy",       # deploy
    "pipeline.rollout.kube_cli",     # promote, rollback
    "pipeline.rollout.canary",       # loadtest, gate
    "pipeline.observe.monitor",      # monitor
    "pipeline.observe.drill",        # drill
    "pipeline.observe.soak",         # soak
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="shopserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shopserve`` command."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
