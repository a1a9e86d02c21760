#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine to build, run and test leash:
# installs the system packages (idempotent) and starts dockerd when nothing
# answers. Run as root. Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (sudo $0)" >&2
  exit 64
fi

packages=(
  clang libelf-dev zlib1g-dev pkg-config make   # libbpf (sensor) and BPF programs
  docker.io                                     # the container engine sessions run on
  podman                                        # the other engine (its Docker-compatible API)
  busybox-static                                # the offline test image
  debootstrap                                   # the Debian base of the larger images, the session VM's root
  e2fsprogs                                     # mkfs.ext4: the session VM's disks (cargo xtask vmtest --sessions)
  systemd                                       # systemd-analyze verify of the unit
  iproute2 procps                               # network namespaces and process tools in tests
  openssl                                       # test certificates
  cpio                                          # the VM test's initramfs
  util-linux                                    # nsenter (sessions' pid-namespace settings)
  iptables                                      # the proxy's redirect rules in session containers
  dnsmasq-base                                  # a real resolver on the host for the DNS relay's test
  chromium chromium-driver fonts-liberation     # the Control UI's browser tests
  zsh fish                                      # the shell completions' tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo is not on PATH; install the Rust toolchain named in rust-toolchain.toml" >&2
  exit 1
fi

# A machine restored from a snapshot can carry pid files of daemons that no
# longer run; dockerd refuses to start over its own stale pid file.
clear_stale_pid() {
  local file=$1 name=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    return 0
  fi
  echo "setup.sh: removing stale $file (pid ${pid:-none} is not $name)"
  rm -f "$file"
}

if ! docker info >/dev/null 2>&1; then
  echo "setup.sh: starting dockerd"
  clear_stale_pid /var/run/docker.pid dockerd
  clear_stale_pid /var/run/docker/containerd/containerd.pid containerd
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "setup.sh: dockerd did not start; the end of /var/log/dockerd.log:" >&2
    tail -n 20 /var/log/dockerd.log >&2 || true
    exit 1
  fi
fi
# Podman serves a Docker-compatible API on its own socket. Root here may
# lack CAP_SYS_RESOURCE, so lower Podman's default ulimits once.
conf=/etc/containers/containers.conf
ulimits='default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
if ! grep -qs default_ulimits "$conf"; then
  mkdir -p /etc/containers
  if grep -qs '^\[containers\]' "$conf"; then
    # A second [containers] table would make the file invalid.
    sed -i "/^\[containers\]/a $ulimits" "$conf"
  else
    printf '[containers]\n%s\n' "$ulimits" >> "$conf"
  fi
fi
# Its cgroupfs manager places containers below the cgroup parent leash gives
# them (the systemd manager, the default where systemd runs, would not).
if ! DOCKER_HOST=unix:///run/podman/podman.sock docker version >/dev/null 2>&1; then
  echo "setup.sh: starting podman's API service"
  mkdir -p /run/podman
  nohup podman --cgroup-manager=cgroupfs system service --time=0 unix:///run/podman/podman.sock \
    >/var/log/podman-service.log 2>&1 &
  for _ in $(seq 1 40); do
    DOCKER_HOST=unix:///run/podman/podman.sock docker version >/dev/null 2>&1 && break
    sleep 0.25
  done
  if ! DOCKER_HOST=unix:///run/podman/podman.sock docker version >/dev/null 2>&1; then
    echo "setup.sh: podman's API service did not start; the end of /var/log/podman-service.log:" >&2
    tail -n 20 /var/log/podman-service.log >&2 || true
    exit 1
  fi
fi
driver=$(DOCKER_HOST=unix:///run/podman/podman.sock docker info --format '{{.CgroupDriver}}' 2>/dev/null || true)
if [ "$driver" != cgroupfs ]; then
  echo "setup.sh: podman's API service uses the ${driver:-unknown} cgroup manager; leash refuses its sessions" \
    "(restart it with: podman --cgroup-manager=cgroupfs system service --time=0 unix:///run/podman/podman.sock)" >&2
fi
echo "setup.sh: ready ($(docker version --format 'docker {{.Server.Version}}' 2>/dev/null), podman $(podman version --format '{{.Server.Version}}' 2>/dev/null))"
