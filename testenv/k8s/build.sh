#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# from Go modules, once, into a cache folder outside the repo keyed by the Kubernetes version.
# Later runs find all four binaries there, built from the same inputs, and print "cached".
# Used by .ci/run (beside the pip install) and by the kube_control_plane pytest fixture.
#
# The cache folder: $RAYKUBE_K8S_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-raykube/
# k8s-v1.37.2. Binaries land in its bin/. A build goes to a temp folder beside it and is moved
# into place with one rename, so an interrupted build never leaves a half-filled bin/.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.0  # the etcd client version k8s.io/kubernetes v1.37.2 requires
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${RAYKUBE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-raykube/k8s-${K8S_VERSION}}"
bin="$cache/bin"

# What `make` stamps in: without it /version answers v0.0.0-master and kubectl warns of skew.
minor="${K8S_VERSION#v1.}" && minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# The build's inputs; a cache built from other ones (an edited go.sum, other flags) is rebuilt.
stamp="$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" "$here/etcd/main.go" \
          <(echo "$ldflags") | sha256sum | cut -c1-16)"

cached() {
  local name
  for name in "${BINARIES[@]}"; do
    [[ -x "$bin/$name" ]] || return 1
  done
  [[ "$(cat "$bin/.inputs" 2>/dev/null)" == "$stamp" ]]
}

if cached; then
  echo "k8s control plane ${K8S_VERSION} (etcd ${ETCD_VERSION}): cached in $bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' not found; install Go >= 1.26" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # a second build.sh waits for the first, then finds its result
if cached; then
  echo "k8s control plane ${K8S_VERSION} (etcd ${ETCD_VERSION}): cached in $bin (built meanwhile)"
  exit 0
fi
staging="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

start=$SECONDS
echo "k8s control plane ${K8S_VERSION} (etcd ${ETCD_VERSION}): building into $bin ($(go version))"
# -buildvcs=false: the module sits inside our git checkout, whose state is not the binaries'.
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false"
build() {  # build DIR OUTPUT PACKAGE
  local t0=$SECONDS
  (cd "$1" && go build -trimpath -ldflags="$ldflags" -o "$staging/bin/$2" "$3")
  echo "  built $2 in $((SECONDS - t0))s"
}
mkdir -p "$staging/bin"
build "$here/etcd" etcd .
build "$here" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build "$here" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build "$here" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler

echo "$stamp" > "$staging/bin/.inputs"
# Replace an outdated bin/; the rename is the only step that makes the new one visible.
rm -rf "$bin"
mv "$staging/bin" "$bin"
echo "k8s control plane ${K8S_VERSION}: built in $((SECONDS - start))s"
