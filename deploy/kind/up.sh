#!/usr/bin/env bash
# Build kvsync's image, load it into a Kind cluster and deploy the Kind overlay.
#   deploy/kind/up.sh          create (or reuse) the cluster, build, load, deploy, wait
#   deploy/kind/up.sh down     delete the cluster
# Needs docker, kind and kubectl (with built-in kustomize: `kubectl apply -k`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-kvsync}"
image="${KVSYNC_IMAGE:-kvsync:dev}"

need() { command -v "$1" >/dev/null || { echo "up.sh: $1 is required" >&2; exit 1; }; }
need docker
need kind
need kubectl

if [ "${1:-}" = "down" ]; then
  kind delete cluster --name "$cluster"
  exit 0
fi

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$cluster" >/dev/null

docker build -f "$root/deploy/Dockerfile" -t "$image" "$root"
kind load docker-image "$image" --name "$cluster"

kubectl apply -k "$here"
kubectl -n kvsync rollout status deployment/kvsync-mock-engine --timeout=180s
kubectl -n kvsync rollout status deployment/kvsync-gateway --timeout=180s

cat <<MSG
kvsync is up. Try:
  curl -s localhost:8080/v1/completions -H 'content-type: application/json' \\
    -d '{"model":"Qwen/Qwen3-0.6B","prompt":"Hello","max_tokens":8}'
  kubectl -n kvsync port-forward deploy/kvsync-gateway 8081:8081 &
  curl -s localhost:8081/admin/pods
MSG
