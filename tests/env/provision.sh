#!/usr/bin/env bash
# Provisions the real components of the test environment, idempotently:
#   - cargo-deny (crates.io, `cargo install`) for make lint's license and ban checks
#   - PostgreSQL server binaries (Debian package `postgresql`, installed when initdb is missing)
#   - Java 17+ and Maven (Debian packages, when missing), then the Apache Kafka broker jars from
#     Maven Central
#   - etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet and
#     kube-proxy, built with `go build` from the Go module proxy
#   - Istio's CRDs (istio.io/api from the Go module proxy) and Helm (helm.sh/helm/v4, built)
#   - promtool (Debian package `prometheus`) and the Prometheus Operator's CRDs (Go module)
#   - podman and runc (Debian packages), and the base image debian:bookworm-slim made with
#     debootstrap
#   - containerd, the CNI plugins and iptables for a real node (Debian packages)
#   - Chromium (Debian package), which loads the runtime's /docs page headless
# Everything fetched or built lands in $AUDIT_MANAGER_CACHE (default ~/.cache/audit-manager),
# one folder per component and version, so the next run and a fresh clone reuse it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${AUDIT_MANAGER_CACHE:-$HOME/.cache/audit-manager}"
mkdir -p "$cache"

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'provision: %s\n' "$*" >&2; exit 1; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install these packages by hand: $*"
  if [ -z "$apt_updated" ]; then
    step "apt-get update"
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  step "apt-get install $*"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- PostgreSQL -----------------------------------------------------------------------------
provision_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
  fi
  # Debian's package starts a cluster of its own; the tests never use it.
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    step "creating the unprivileged user 'postgres' (initdb refuses to run as root)"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  command -v openssl >/dev/null || apt_install openssl
}

# ---- Rust build tools -----------------------------------------------------------------------
# librdkafka is linked with OpenSSL built from source (the openssl-src crate), so no image
# needs a system OpenSSL: its Configure needs a full perl and make.
provision_build() {
  perl -MFindBin -MIPC::Cmd -MFile::Compare -e1 2>/dev/null || apt_install perl
  command -v make >/dev/null || apt_install make
}

# cargo-deny for `make lint` (licenses and bans), compiled once per version from crates.io into
# the cache: there is no prebuilt binary to fetch here, and the build is a few minutes.
provision_lint() {
  local root="$cache/cargo-deny-$CARGO_DENY_VERSION"
  [ -x "$root/bin/cargo-deny" ] && return
  step "building cargo-deny $CARGO_DENY_VERSION (cargo install, first run only)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$root.partial" \
    --target-dir "$cache/cargo-deny-build" >&2
  rm -rf "$root" "$cache/cargo-deny-build"
  mv "$root.partial" "$root"
}

# ---- Kafka ----------------------------------------------------------------------------------
provision_kafka() {
  local java_major=0
  if command -v java >/dev/null; then
    java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | cut -d. -f1)
  fi
  if [ "${java_major:-0}" -lt 17 ]; then
    apt_install openjdk-17-jre-headless
  fi
  command -v mvn >/dev/null || apt_install maven

  local dest="$cache/kafka-$KAFKA_VERSION"
  if [ -f "$dest/.complete" ]; then return; fi
  step "fetching Apache Kafka $KAFKA_VERSION broker jars from Maven Central"
  rm -rf "$dest.partial"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
    -DoutputDirectory="$dest.partial/libs" >&2
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  touch "$dest/.complete"
}

# ---- etcd and Kubernetes --------------------------------------------------------------------
go_build() { # go_build MODULE_DIR OUTPUT LDFLAGS PACKAGE...
  local dir=$1 out=$2 ldflags=$3; shift 3
  command -v go >/dev/null || die "the Go toolchain is required to build $* (not found on PATH)"
  (cd "$dir" && go build -trimpath -ldflags="-s -w $ldflags" -o "$out" "$@") >&2
}

require_pinned() { # require_pinned GO_MOD MODULE VERSION
  grep -q "^require $2 $3\$" "$1" \
    || die "$1 must require '$2 $3' (tests/env/versions.env); update both together"
}

provision_kube() {
  local etcd_dir="$cache/etcd-$ETCD_VERSION/bin"
  if [ ! -x "$etcd_dir/etcd" ]; then
    require_pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    step "building etcd $ETCD_VERSION (go build, first run only)"
    mkdir -p "$etcd_dir"
    go_build "$here/etcd" "$etcd_dir/etcd.partial" "" go.etcd.io/etcd/server/v3
    mv "$etcd_dir/etcd.partial" "$etcd_dir/etcd"
  fi

  local k8s_dir="$cache/k8s-$KUBERNETES_VERSION/bin"
  local commands=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) missing=0 c
  for c in "${commands[@]}"; do [ -x "$k8s_dir/$c" ] || missing=1; done
  if [ ! -f "$k8s_dir/.complete" ] || [ "$missing" = 1 ]; then
    require_pinned "$here/k8s/go.mod" k8s.io/kubernetes "$KUBERNETES_VERSION"
    step "building kube-apiserver, kube-controller-manager, kubectl, kube-scheduler, kubelet, kube-proxy $KUBERNETES_VERSION (go build, first run only; several minutes)"
    mkdir -p "$k8s_dir"
    # The release build stamps its version in; without it the binaries call themselves
    # v0.0.0-master, and the API server derives its emulated version from that.
    local v=k8s.io/component-base/version minor=${KUBERNETES_VERSION#v*.}
    minor=${minor%%.*}
    go_build "$here/k8s" "$k8s_dir/" \
      "-X $v.gitVersion=$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy \
      k8s.io/kubernetes/cmd/kube-scheduler
    touch "$k8s_dir/.complete"
  fi
}

# The folder of a Go module as the module proxy serves it, in the Go module cache (outside any
# module, so no go.mod or go.sum of this checkout changes).
module_dir() { # module_dir MODULE VERSION
  command -v go >/dev/null || die "the Go toolchain is required to fetch $1 (not found on PATH)"
  local tmp dir
  tmp=$(mktemp -d)
  dir=$(cd "$tmp" && GO111MODULE=on go mod download -json "$1@$2" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  rmdir "$tmp"
  [ -n "$dir" ] || die "the Go module proxy did not serve $1@$2"
  echo "$dir"
}

# Istio's CRDs as Istio publishes them (full schemas), so the API server validates what the
# operator renders as a cluster with Istio would. From the Go module proxy, like the rest.
provision_istio() {
  local out="$cache/istio-$ISTIO_API_VERSION/crds.yaml"
  [ -s "$out" ] && return
  step "fetching Istio's CRDs (istio.io/api $ISTIO_API_VERSION, first run only)"
  local dir
  dir=$(module_dir istio.io/api "$ISTIO_API_VERSION")
  [ -f "$dir/kubernetes/customresourcedefinitions.gen.yaml" ] \
    || die "istio.io/api $ISTIO_API_VERSION holds no kubernetes/customresourcedefinitions.gen.yaml"
  mkdir -p "$(dirname "$out")"
  install -m 644 "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$out.partial"
  mv "$out.partial" "$out"
}

# The monitoring bundle's checks: promtool (Debian's `prometheus` package) for the alerting
# rules, and the Prometheus Operator's PodMonitor and PrometheusRule CRDs (from its Go module)
# for the API server to validate what the operator renders and manifests/monitoring/ holds.
provision_monitoring() {
  command -v promtool >/dev/null || apt_install prometheus
  local out="$cache/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  [ -f "$out/.complete" ] && return
  step "fetching the Prometheus Operator's CRDs ($PROMETHEUS_OPERATOR_VERSION, first run only)"
  local dir kind
  dir=$(module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")
  mkdir -p "$out"
  for kind in podmonitors prometheusrules; do
    install -m 644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
  done
  touch "$out/.complete"
}

# Helm, for the chart in charts/ (lint, template, install on the test cluster).
provision_helm() {
  local out="$cache/helm-$HELM_VERSION/bin/helm"
  [ -x "$out" ] && return
  require_pinned "$here/helm/go.mod" helm.sh/helm/v4 "$HELM_VERSION"
  step "building helm $HELM_VERSION (go build, first run only)"
  mkdir -p "$(dirname "$out")"
  go_build "$here/helm" "$out.partial" "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    helm.sh/helm/v4/cmd/helm
  mv "$out.partial" "$out"
}

# Chromium, for the test that loads the runtime's /docs page headless and sees it render
# without internet access (runtime/tests/docs_page.rs).
provision_browser() {
  command -v chromium >/dev/null || apt_install chromium
}

# ---- Container images -----------------------------------------------------------------------
# podman builds the project's images (runtime/Dockerfile, operator/Dockerfile) and runc runs
# their steps (crun refuses this kind of machine's hybrid cgroups). No registry is reachable,
# so the base image the Dockerfiles start from, debian:bookworm-slim, is made here:
# debootstrap's minbase, trimmed as the official slim image is, kept as a root file system
# tarball that the test environment imports into its own image store (tests/support images.rs).
provision_images() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v strip >/dev/null || need+=(binutils)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

  local dest="$cache/debian-bookworm-slim"
  [ -f "$dest/rootfs.tar" ] && return
  step "making the base image debian:bookworm-slim with debootstrap (first run only, about a minute)"
  local root="$dest/rootfs.partial"
  mkdir -p "$dest"
  sudo_if_needed rm -rf "$root"
  sudo_if_needed debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    >"$dest/debootstrap.log" 2>&1 || die "debootstrap failed; see $dest/debootstrap.log"
  # What the official slim image leaves out: documentation, manuals, locales, caches, logs.
  sudo_if_needed find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  sudo_if_needed rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/* "$root"/usr/share/locale/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
  sudo_if_needed tee "$root/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
DPKG
  sudo_if_needed tar --numeric-owner -C "$root" -cf "$dest/rootfs.tar.partial" .
  sudo_if_needed rm -rf "$root"
  mv "$dest/rootfs.tar.partial" "$dest/rootfs.tar"
}

# ---- A real node -----------------------------------------------------------------------------
# containerd (with runc), the CNI plugins and iptables (kube-proxy) from Debian's packages, and
# gcc for the pause image (built from pause.c in the Go module cache: no registry is reachable).
# kubelet and kube-proxy are built with the other Kubernetes commands (provision_kube).
provision_node() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(build lint postgres kafka kube istio helm monitoring browser images node)
for c in "${components[@]}"; do
  case "$c" in
    build) provision_build ;;
    lint) provision_lint ;;
    postgres) provision_postgres ;;
    kafka) provision_kafka ;;
    kube) provision_kube ;;
    istio) provision_istio ;;
    helm) provision_helm ;;
    monitoring) provision_monitoring ;;
    browser) provision_browser ;;
    images) provision_images ;;
    node) provision_node ;;
    *) die "unknown component '$c' (expected build, lint, postgres, kafka, kube, istio, helm, monitoring, browser, images or node)" ;;
  esac
done
step "test environment provisioned in $cache"
