#!/usr/bin/env bash
# check.sh: validates every manifest in deploy/k8s against the Kubernetes API schema, offline
# (no cluster), with kubernetes-validate in strict mode (unknown fields are errors).
#
# On a fresh Debian 12 machine, install it first (CPython with pip; on Debian's own python3,
# apt-get install -y python3-pip first):
#   python3 -m pip install --break-system-packages kubernetes-validate==1.37.0
#
#   deploy/k8s/check.sh [-k KUBERNETES_VERSION]     (default: the newest the tool knows)
set -euo pipefail

dir=$(cd "$(dirname "$0")" && pwd)
version=()
case ${1:-} in
-k)
    [ -n "${2:-}" ] || { echo "usage: $0 [-k KUBERNETES_VERSION]" >&2; exit 2; }
    version=(--kubernetes-version "$2")
    ;;
"") ;;
*) echo "usage: $0 [-k KUBERNETES_VERSION]" >&2; exit 2 ;;
esac

# The console script, or the module where the script's directory is not on PATH.
if command -v kubernetes-validate >/dev/null; then
    validate=(kubernetes-validate)
elif python3 -c 'import kubernetes_validate' 2>/dev/null; then
    validate=(python3 -m kubernetes_validate)
else
    echo "check.sh: kubernetes-validate not found. Install it with:" >&2
    echo "  python3 -m pip install --break-system-packages kubernetes-validate==1.37.0" >&2
    exit 1
fi

shopt -s nullglob
manifests=("$dir"/*.yaml)
[ ${#manifests[@]} -gt 0 ] || { echo "check.sh: no manifest in $dir" >&2; exit 1; }

echo "+ ${validate[*]} --strict ${version[*]} ${manifests[*]#"$dir/"}"
"${validate[@]}" --strict "${version[@]}" "${manifests[@]}"
echo "check.sh: ${#manifests[@]} manifests valid"
