"""The local bundle registry: versioned bundles, their lineage, and ``shopserve bundles``.

A registry is a folder (default ``artifacts/bundles/``) of bundles, one folder per version::

    artifacts/bundles/<version>/
        bundle.json              the bundle manifest (below)
        catalog/manifest.json    component manifests: sha256 of every file, data summary,
        recall/manifest.json     training parameters, metrics, parent version, git revision
        ranker/manifest.json
        report/report.md, *.png  the evaluation report of the release

``bundle.json`` points at its components (the sha256 of each component's ``manifest.json``, so a
manifest edited to match a tampered file is caught too), lists the sha256 of every file outside
the components (the report, anything a package extra added), and records the parent version, the
git revision, the pipeline parameters and the release's key metrics. A folder without
``bundle.json`` (e.g. ``artifacts/demo``) is still a bundle: its components are checked alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shopserve.artifacts import (
    MANIFEST,
    Manifest,
    check_files,
    git_revision,
    new_version,
    read_manifest,
    sha256_file,
    verify,
)
from shopserve.errors import BundleError
from shopserve.release import ReleaseMetrics, current_keys

BUNDLE_MANIFEST = "bundle.json"
DEFAULT_REGISTRY = Path("artifacts/bundles")
BUNDLE_FORMAT_VERSION = 1


@dataclass
class BundleManifest:
    """What ``bundle.json`` holds.

    Attributes:
        version: Release version (the folder name).
        created: ISO-8601 UTC time of packaging.
        parent: Version of the bundle this release follows, if any.
        git_revision: Commit of the code that built it.
        components: Component name -> ``{"manifest_sha256", "version", "files"}``.
        files: Relative path -> sha256 of every file outside the components.
        data: Data summary of the release.
        params: Pipeline parameters (the configuration sections that built it).
        metrics: Key numbers of the release (see :func:`key_metrics`).
        format_version: Schema version.
    """

    version: str
    created: str
    parent: str | None
    git_revision: str | None
    components: dict[str, dict[str, Any]]
    files: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT_VERSION

    @classmethod
    def read(cls, folder: Path) -> BundleManifest:
        """Read ``<folder>/bundle.json``.

        Raises:
            BundleError: missing, unreadable or incomplete.
        """
        path = Path(folder) / BUNDLE_MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{folder}: no {BUNDLE_MANIFEST}") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: unreadable bundle manifest ({exc})") from exc
        missing = [k for k in ("version", "created", "components", "files") if k not in raw]
        if missing:
            raise BundleError(f"{path}: lacks {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


def component_folders(bundle: Path) -> list[Path]:
    """The component folders of a bundle (those with a ``manifest.json``), sorted by name."""
    return sorted(p.parent for p in Path(bundle).glob(f"*/{MANIFEST}"))


def _outside_files(bundle: Path, components: Iterable[Path]) -> dict[str, str]:
    inside = {c.resolve() for c in components}
    out: dict[str, str] = {}
    for path in sorted(Path(bundle).rglob("*")):
        if not path.is_file() or path.name == BUNDLE_MANIFEST and path.parent == bundle:
            continue
        if any(parent.resolve() in inside for parent in path.parents):
            continue
        out[path.relative_to(bundle).as_posix()] = sha256_file(path)
    return out


def write_bundle_manifest(
    bundle: Path,
    version: str,
    *,
    parent: str | None,
    data: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> BundleManifest:
    """Write ``bundle.json`` for a bundle whose components and extra files are all in place."""
    bundle = Path(bundle)
    components = component_folders(bundle)
    if not components:
        raise BundleError(f"{bundle}: no components to point at")
    manifest = BundleManifest(
        version=version,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        parent=parent,
        git_revision=git_revision(),
        components={
            c.name: {"manifest_sha256": sha256_file(c / MANIFEST),
                     "version": read_manifest(c).version,
                     "files": len(read_manifest(c).files)}
            for c in components
        },
        files=_outside_files(bundle, components),
        data=dict(data or {}),
        params=dict(params or {}),
        metrics=dict(metrics or key_metrics(bundle)),
    )
    (bundle / BUNDLE_MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    return manifest


def verify_bundle(bundle: Path) -> dict[str, list[str]]:
    """Every problem of a bundle, by component (``bundle`` for ``bundle.json`` and its files).

    Empty lists everywhere mean the bundle is intact.
    """
    bundle = Path(bundle)
    components = component_folders(bundle)
    problems: dict[str, list[str]] = {}
    for folder in components:
        try:
            problems[folder.name] = [f"{folder.name}/{p}" for p in verify(folder)]
        except BundleError as exc:
            problems[folder.name] = [str(exc)]
    if (bundle / BUNDLE_MANIFEST).exists():
        found: list[str] = []
        try:
            manifest = BundleManifest.read(bundle)
        except BundleError as exc:
            problems["bundle"] = [str(exc)]
            return problems
        for name, entry in sorted(manifest.components.items()):
            path = bundle / name / MANIFEST
            if not path.is_file():
                found.append(f"{name}/{MANIFEST}: missing (component '{name}' is listed)")
            elif sha256_file(path) != entry.get("manifest_sha256"):
                found.append(f"{name}/{MANIFEST}: sha256 mismatch")
        found += check_files(bundle, manifest.files)
        problems["bundle"] = found
    elif not components:
        problems["bundle"] = [f"{bundle}: no components and no {BUNDLE_MANIFEST}"]
    return problems


def key_metrics(bundle: Path) -> dict[str, Any]:
    """The release's key numbers from its component manifests (the report's opening table).

    Read through :class:`shopserve.release.ReleaseMetrics`, so bundles written with the legacy
    spellings give the same keys.
    """
    return ReleaseMetrics.from_bundle(bundle).key_metrics()


def flat_metrics(bundle: Path) -> dict[str, float]:
    """Every numeric metric of every component, flattened to ``component.path.to.metric``.

    Lists of evaluation rows are keyed by each row's ``name`` (``ranker.evaluation.onnx-int8.mrr``).
    Keys are in the one spelling (:func:`shopserve.release.current_keys`), so a bundle written
    with the legacy ``ndcg@10`` compares with a new one.
    """
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int | float):
            out[prefix] = float(value)
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        elif isinstance(value, list):
            for i, inner in enumerate(value):
                name = inner.get("name", str(i)) if isinstance(inner, Mapping) else str(i)
                walk(f"{prefix}.{name}", inner)

    for folder in component_folders(bundle):
        walk(folder.name, current_keys(read_manifest(folder).metrics))
    return out


@dataclass(frozen=True)
class MetricChange:
    """One row of ``bundles diff``."""

    metric: str
    before: float | None
    after: float | None

    @property
    def delta(self) -> float | None:
        """``after - before`` when both exist."""
        return None if self.before is None or self.after is None else self.after - self.before


def diff(a: Path, b: Path, *, changed_only: bool = False) -> list[MetricChange]:
    """Metric changes from bundle ``a`` to bundle ``b`` (every metric either one has)."""
    before, after = flat_metrics(a), flat_metrics(b)
    rows = [MetricChange(k, before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())]
    if changed_only:
        rows = [r for r in rows if r.before != r.after]
    return rows


def format_change(delta: float, before: float | None) -> str:
    """A numeric change as ``=`` or ``+0.012 (+1.5%)`` (no percentage from a zero or no value)."""
    if delta == 0:
        return "="
    rel = f" ({delta / abs(before):+.1%})" if before else ""
    return f"{delta:+.4g}{rel}"


def format_diff(rows: Iterable[MetricChange], a: str, b: str) -> str:
    """``bundles diff`` as an aligned text table."""
    rows = list(rows)
    width = max([len("metric"), *(len(r.metric) for r in rows)])

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    def change(r: MetricChange) -> str:
        if r.delta is None:
            return "added" if r.before is None else "removed"
        return format_change(r.delta, r.before)

    lines = [f"{'metric':<{width}}  {a[:14]:>14}  {b[:14]:>14}  change", "-" * (width + 44)]
    lines += [f"{r.metric:<{width}}  {num(r.before):>14}  {num(r.after):>14}  {change(r)}" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class BundleSummary:
    """One row of ``bundles list``.

    Attributes:
        version: Release version.
        path: The bundle folder.
        created: ISO-8601 UTC time of packaging.
        parent: Parent version, if any.
        metrics: ``bundle.json``'s key metrics, keys in the one spelling (legacy ones read too).
    """

    version: str
    path: Path
    created: str
    parent: str | None
    metrics: dict[str, Any]

    @property
    def release(self) -> ReleaseMetrics:
        """The key metrics, typed."""
        return ReleaseMetrics.from_key_metrics(self.metrics)


class Registry:
    """A folder of versioned bundles.

    Args:
        root: The registry folder (created on first write).
    """

    def __init__(self, root: Path = DEFAULT_REGISTRY) -> None:
        self.root = Path(root)

    def bundles(self) -> list[BundleSummary]:
        """Every bundle with a readable ``bundle.json``, oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if not (folder / BUNDLE_MANIFEST).is_file():
                continue
            try:
                m = BundleManifest.read(folder)
            except BundleError:
                continue
            out.append(BundleSummary(m.version, folder, m.created, m.parent, current_keys(m.metrics)))
        return sorted(out, key=lambda b: (b.created, b.version))

    def latest(self) -> BundleSummary | None:
        """The newest bundle, or None in an empty registry."""
        bundles = self.bundles()
        return bundles[-1] if bundles else None

    def resolve(self, ref: str | Path) -> Path:
        """A bundle folder from a version in this registry, ``latest``, or a path.

        Raises:
            BundleError: no such bundle.
        """
        if str(ref) == "latest":
            latest = self.latest()
            if latest is None:
                raise BundleError(f"registry {self.root} is empty")
            return latest.path
        path = Path(ref)
        if path.is_dir():
            return path
        if (self.root / str(ref)).is_dir():
            return self.root / str(ref)
        raise BundleError(f"no bundle '{ref}' (neither a folder nor a version in {self.root})")

    def new_version(self) -> str:
        """A version not yet in the registry (``YYYYMMDD.HHMMSS``, ``-02``... within a second)."""
        base = new_version()
        version, n = base, 1
        while (self.root / version).exists():
            n += 1
            version = f"{base}-{n:02d}"
        return version

    def lineage(self, ref: str | Path) -> list[str]:
        """The versions from a bundle back through its parents (stops at one not in the registry)."""
        chain: list[str] = []
        path: Path | None = self.resolve(ref)
        while path is not None and (path / BUNDLE_MANIFEST).is_file():
            m = BundleManifest.read(path)
            if m.version in chain:
                break
            chain.append(m.version)
            path = self.root / m.parent if m.parent and (self.root / m.parent).is_dir() else None
            if path is None and m.parent:
                chain.append(f"{m.parent} (not in registry)")
        return chain


# --------------------------------------------------------------------------------------------------
# ``shopserve bundles``
# --------------------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    bundles = registry.bundles()
    if args.json:
        print(json.dumps([{"version": b.version, "path": str(b.path), "created": b.created,
                           "parent": b.parent, "metrics": b.metrics} for b in bundles], indent=2))
        return 0
    if not bundles:
        print(f"no bundles in {registry.root}")
        return 0
    print(f"{'version':<20} {'created':<26} {'parent':<20} {'ranker NDCG@10':>14} "
          f"{'recall NDCG@10':>14}  variant")
    for b in reversed(bundles):
        release = b.release

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        print(f"{b.version:<20} {b.created:<26} {b.parent or '-':<20} "
              f"{num(release.ranker_ndcg_at_10):>14} {num(release.recall_ndcg_at_10):>14}  "
              f"{release.ranker_variant or '-'}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    try:
        bundle = registry.resolve(args.bundle)
        components: dict[str, Manifest] = {c.name: read_manifest(c) for c in component_folders(bundle)}
        manifest = BundleManifest.read(bundle) if (bundle / BUNDLE_MANIFEST).exists() else None
    except BundleError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"bundle": asdict(manifest) if manifest else None,
                          "components": {n: asdict(m) for n, m in components.items()}},
                         indent=2, default=str))
        return 0
    print(f"bundle   {bundle}")
    if manifest:
        print(f"version  {manifest.version}\ncreated  {manifest.created}\nparent   {manifest.parent or '-'}"
              f"\ngit      {manifest.git_revision or '-'}")
        print("lineage  " + " <- ".join(registry.lineage(bundle)))
    for name, m in components.items():
        print(f"\n[{name}] version {m.version}, {len(m.files)} files, created {m.created}, "
              f"parent {m.parent or '-'}")
        for key, value in sorted(key_metrics(bundle).items()):
            if key.startswith(f"{name}."):
                print(f"  {key.split('.', 1)[1]:<22} {value}")
    if manifest and manifest.files:
        print("\nother files: " + ", ".join(sorted(manifest.files)))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    try:
        a, b = registry.resolve(args.a), registry.resolve(args.b)
        rows = diff(a, b, changed_only=args.changed)
    except BundleError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{**asdict(r), "delta": r.delta} for r in rows], indent=2))
    else:
        print(format_diff(rows, str(args.a), str(args.b)))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    try:
        bundle = registry.resolve(args.bundle)
    except BundleError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = verify_bundle(bundle)
    if not problems:
        print(f"{bundle}: no components", file=sys.stderr)
        return 1
    for name, found in problems.items():
        print(f"{name:<10} {'ok' if not found else 'CORRUPT'}")
        for problem in found:
            print(f"  {problem}")
    failed = [p for found in problems.values() for p in found]
    if failed:
        print(f"{bundle}: {len(failed)} problem(s); do not serve or publish this bundle",
              file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bundles list|show|diff|verify`` to the ``shopserve`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY,
                        help="bundle registry folder (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    bundles = sub.add_parser("bundles", help="list, inspect, compare and verify bundles")
    actions = bundles.add_subparsers(dest="action", required=True)

    p = actions.add_parser("list", parents=[common], help="bundles in the registry, newest first")
    p.set_defaults(func=_cmd_list)
    p = actions.add_parser("show", parents=[common], help="a bundle's manifest, lineage and key metrics")
    p.add_argument("bundle", help="version in the registry, 'latest', or a bundle folder")
    p.set_defaults(func=_cmd_show)
    p = actions.add_parser("diff", parents=[common], help="metric changes from bundle A to bundle B")
    p.add_argument("a", help="version or folder (before)")
    p.add_argument("b", help="version or folder (after)")
    p.add_argument("--changed", action="store_true", help="only metrics that differ")
    p.set_defaults(func=_cmd_diff)
    p = actions.add_parser("verify", parents=[common],
                           help="check every checksum; exit 1 naming each missing or changed file")
    p.add_argument("bundle", help="version in the registry, 'latest', or a bundle folder")
    p.set_defaults(func=_cmd_verify)
