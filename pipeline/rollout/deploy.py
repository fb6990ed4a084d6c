"""``shopserve deploy``: install a bundle into an environment with Helm, or render it (``--dry-run``).

``deploy --env ENV --bundle VERSION`` runs::

    helm upgrade --install shopserve charts/shopserve --namespace shopserve --create-namespace \\
      --values charts/shopserve/values-ENV.yaml --set image.tag=TAG \\
      --set search.storageUri=URI --set ranker.storageUri=URI/ranker --set recall.storageUri=URI/recall \
      --set sequence.enabled=true --set sequence.storageUri=URI/sequence \
      --set semantic.enabled=true --set semantic.storageUri=URI/semantic

where ``URI`` is ``<storage prefix>/<version>`` (the bundle as published, see the README's
"Publish a bundle"). A bundle without a ``sequence/`` component deploys with
``sequence.enabled=false`` (no ``seq-recommender``; recommendations from MF and popularity), one
without a ``semantic/`` component with ``semantic.enabled=false`` (no ``query-encoder``; search
candidates from BM25 and MF only).
``--canary N`` deploys the bundle as a canary instead: the stable ``storageUri`` values point at the
stable bundle (``--stable``, default the bundle's parent) and the ranker's, recall's and the
sequence model's ``canary`` values take the new bundle with ``trafficPercent: N``. The sequence
model takes part in a canary only when both bundles have it (the stable one as the local registry
holds it); otherwise it stays off until the full rollout, since the transformer's
``SEARCH_SEQUENCE_ENABLED`` is not split by the canary. The query encoder never takes part: the
transformer searches the item embeddings of the bundle it serves (the stable one during a canary),
and only that bundle's encoder embeds queries into their space, so ``query-encoder`` serves the
stable bundle's ``semantic/`` (and is off when the stable bundle has none) until the full rollout.

``--dry-run`` renders the same values with ``helm template`` (no cluster, no credentials) and prints
the manifests, so what would be installed can be read and tested.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.lifecycle.registry import BUNDLE_MANIFEST, DEFAULT_REGISTRY, BundleManifest, Registry
from pipeline.rollout.manifests import CHART, ENVIRONMENTS, NAMESPACE, RELEASE, HelmNotFound, find_helm
from shopserve.artifacts import (
    MANIFEST,
    RANKER_COMPONENT,
    RECALL_COMPONENT,
    SEMANTIC_COMPONENT,
    SEQUENCE_COMPONENT,
)
from shopserve.errors import BundleError

#: Where published bundles live (``aws s3 sync <bundle> <prefix>/<version>``); the chart's default.
DEFAULT_STORAGE_PREFIX = "s3://shopserve-models/bundles"


@dataclass(frozen=True)
class DeployPlan:
    """What a deploy sets.

    Attributes:
        env: ``dev``, ``staging`` or ``prod``.
        version: The bundle version being deployed.
        storage_uri: The bundle's root URI (``<prefix>/<version>``).
        image_tag: Image tag of the servers (None: the chart's default, the app version).
        canary_percent: Traffic share of a canary deploy, None for a full rollout.
        stable_uri: Root URI of the stable bundle during a canary.
        release: Helm release name.
        namespace: Kubernetes namespace.
        sequence: The bundle has a sequence component (else ``sequence.enabled=false``).
        stable_sequence: During a canary, the stable bundle has one too (else the sequence model
            stays off until the full rollout).
        semantic: The bundle has a semantic component (else ``semantic.enabled=false``).
        stable_semantic: During a canary, the stable bundle has one: the query encoder serves it
            (it must match the item embeddings of the bundle the transformer serves).
    """

    env: str
    version: str
    storage_uri: str
    image_tag: str | None = None
    canary_percent: int | None = None
    stable_uri: str | None = None
    release: str = RELEASE
    namespace: str = NAMESPACE
    sequence: bool = False
    stable_sequence: bool = False
    semantic: bool = False
    stable_semantic: bool = False

    @property
    def values_file(self) -> Path:
        """The environment's values file."""
        return CHART / f"values-{self.env}.yaml"

    def set_values(self) -> list[str]:
        """``key=value`` pairs for ``--set``."""
        values = []
        if self.image_tag:
            values.append(f"image.tag={self.image_tag}")
        stable = self.stable_uri if self.canary_percent is not None else self.storage_uri
        values += [
            f"search.storageUri={stable}",
            f"ranker.storageUri={stable}/{RANKER_COMPONENT}",
            f"recall.storageUri={stable}/{RECALL_COMPONENT}",
        ]
        canary = self.canary_percent is not None
        sequence = self.sequence and (self.stable_sequence or not canary)
        values.append(f"{SEQUENCE_COMPONENT}.enabled={str(sequence).lower()}")
        if sequence:
            values.append(f"{SEQUENCE_COMPONENT}.storageUri={stable}/{SEQUENCE_COMPONENT}")
        # The query encoder follows the bundle the transformer serves (search.storageUri): its
        # embeddings must be in the space of that bundle's item embeddings. No canary of its own.
        semantic = self.stable_semantic if canary else self.semantic
        values.append(f"{SEMANTIC_COMPONENT}.enabled={str(semantic).lower()}")
        if semantic:
            values += [f"{SEMANTIC_COMPONENT}.storageUri={stable}/{SEMANTIC_COMPONENT}",
                       f"{SEMANTIC_COMPONENT}.canary.enabled=false"]
        components = (RANKER_COMPONENT, RECALL_COMPONENT, *((SEQUENCE_COMPONENT,) if sequence else ()))
        if canary:
            for component in components:
                values += [
                    f"{component}.canary.enabled=true",
                    f"{component}.canary.trafficPercent={self.canary_percent}",
                    f"{component}.canary.storageUri={self.storage_uri}/{component}",
                ]
        else:
            # A full rollout ends any canary an environment's values file carries (staging and
            # prod ship an example one): in Knative mode the canary's URI would be what renders.
            values += [f"{c}.canary.enabled=false" for c in components]
        return values

    def helm_args(self, *, dry_run: bool) -> list[str]:
        """helm's arguments (without the binary): ``template`` for a dry run, else ``upgrade``."""
        head = (["template", self.release, str(CHART)] if dry_run else
                ["upgrade", "--install", self.release, str(CHART), "--create-namespace"])
        args = [*head, "--namespace", self.namespace, "--values", str(self.values_file)]
        for value in self.set_values():
            args += ["--set", value]
        return args


def plan_deploy(
    env: str,
    bundle: str,
    *,
    registry: Path = DEFAULT_REGISTRY,
    storage_prefix: str = DEFAULT_STORAGE_PREFIX,
    image_tag: str | None = None,
    canary: int | None = None,
    stable: str | None = None,
) -> DeployPlan:
    """Resolve a bundle and an environment into the values a deploy sets.

    Args:
        env: Environment (its values file is ``charts/shopserve/values-<env>.yaml``).
        bundle: Version in the registry, ``latest``, or a bundle folder (its name is the version).
        registry: The registry folder.
        storage_prefix: Where bundles are published; the bundle's URI is ``<prefix>/<version>``.
        image_tag: Image tag of the servers.
        canary: Canary traffic percent (1..99), None for a full rollout.
        stable: Stable bundle version during a canary (default: the bundle's parent).

    Raises:
        ValueError: unknown environment, bad percent, or a canary without a stable bundle.
        BundleError: no such bundle.
    """
    if env not in ENVIRONMENTS:
        raise ValueError(f"--env must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    folder = Registry(registry).resolve(bundle)
    version = folder.name
    parent = None
    if (folder / BUNDLE_MANIFEST).is_file():
        manifest = BundleManifest.read(folder)
        version, parent = manifest.version, manifest.parent
    prefix = storage_prefix.rstrip("/")
    stable_uri = None
    sequence = _has_component(folder, SEQUENCE_COMPONENT)
    semantic = _has_component(folder, SEMANTIC_COMPONENT)
    stable_sequence = stable_semantic = False
    if canary is not None:
        if not 1 <= canary <= 99:
            raise ValueError(f"--canary takes a traffic percent in 1..99, got {canary}")
        stable = stable or parent
        if not stable:
            raise ValueError(f"bundle {version} has no parent: name the stable bundle with --stable")
        stable_uri = f"{prefix}/{stable}"
        try:
            stable_folder = Registry(registry).resolve(stable)
            stable_sequence = _has_component(stable_folder, SEQUENCE_COMPONENT)
            stable_semantic = _has_component(stable_folder, SEMANTIC_COMPONENT)
        except BundleError:
            # Not in the local registry: whether it has a sequence or semantic component is
            # unknown, and a storageUri without one would leave seq-recommender or query-encoder
            # failing; keep them off instead.
            stable_sequence = stable_semantic = False
    return DeployPlan(env, version, f"{prefix}/{version}", image_tag, canary, stable_uri,
                      sequence=sequence, stable_sequence=stable_sequence,
                      semantic=semantic, stable_semantic=stable_semantic)


def _has_component(bundle: Path, component: str) -> bool:
    """Whether a bundle folder has an optional component (its manifest)."""
    return (bundle / component / MANIFEST).is_file()


def _cmd_deploy(args: argparse.Namespace) -> int:
    try:
        plan = plan_deploy(args.env, args.bundle, registry=args.registry,
                           storage_prefix=args.storage_prefix, image_tag=args.image_tag,
                           canary=args.canary, stable=args.stable)  # fmt: skip
        helm = args.helm or find_helm()
    except (ValueError, BundleError, HelmNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = [helm, *plan.helm_args(dry_run=args.dry_run)]
    kind = f"canary {plan.canary_percent}% " if plan.canary_percent is not None else ""
    print(f"# deploy {kind}bundle {plan.version} to {plan.env}: {plan.storage_uri}", file=sys.stderr)
    print("# " + shlex.join(command), file=sys.stderr)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        return 1
    sys.stdout.write(completed.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``deploy`` to the ``shopserve`` parser."""
    deploy = sub.add_parser(
        "deploy", help="helm upgrade --install a bundle into an environment (--dry-run: render only)",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    deploy.add_argument("--env", choices=ENVIRONMENTS, required=True, help="target environment")
    deploy.add_argument("--bundle", default="latest",
                        help="version in the registry, 'latest' or a bundle folder (default: latest)")
    deploy.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY,
                        help="bundle registry folder (default: %(default)s)")
    deploy.add_argument("--storage-prefix", default=DEFAULT_STORAGE_PREFIX,
                        help="where bundles are published; storageUri = PREFIX/VERSION "
                        "(default: %(default)s)")
    deploy.add_argument("--image-tag", default=None, help="image tag of the servers (default: the chart's)")
    deploy.add_argument("--canary", type=int, default=None, metavar="N",
                        help="deploy as a canary taking N%% of ranker, recall and sequence-model traffic")
    deploy.add_argument("--stable", default=None,
                        help="stable bundle version during a canary (default: the bundle's parent)")
    deploy.add_argument("--dry-run", action="store_true",
                        help="render with `helm template` and print the manifests; no cluster needed")
    deploy.add_argument("--helm", default=None, help="helm binary (default: $HELM, .tools/bin/helm, PATH)")
    deploy.set_defaults(func=_cmd_deploy)
