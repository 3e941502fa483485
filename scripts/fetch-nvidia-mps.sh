#!/usr/bin/env bash
# Fetch NVIDIA's MPS control daemon (nvidia-cuda-mps-control and nvidia-cuda-mps-server) from
# Debian's non-free archive into a cache folder, without installing anything on the system.
#
#   scripts/fetch-nvidia-mps.sh [VERSION]      # default 535.261.03; prints the control program
#
# apt-get runs with a private sources list, state and cache (so it needs no root and leaves
# /etc/apt and /var/lib/apt alone); it checks the archive's signature with Debian's keyring and
# every file's hash, as apt always does. dpkg-deb -x unpacks the package into
#   ${GPUSLICE_NVIDIA_MPS_CACHE:-<repo>/.cache/nvidia-mps}/<VERSION>/
# A second run finds the cache and prints the same path without touching the network.
#
# Exit status: 0 and the control program's path on stdout; 1 and the reason on stderr when the
# package cannot be fetched here (no apt-get/dpkg-deb, no keyring, no network, no such version).
#
# Versions are Debian's packaging of NVIDIA's driver, one suite each (packages.debian.org):
# 535.261.03 is bookworm's (Debian 12); 550.163.01 is trixie's (Debian 13). Another version of
# a suite can be named as VERSION@SUITE.
set -euo pipefail

version_spec="${1:-${GPUSLICE_NVIDIA_MPS_VERSION:-535.261.03}}"
version="${version_spec%@*}"
suite=""
if [[ "$version_spec" == *@* ]]; then
    suite="${version_spec#*@}"
fi
if [[ -z "$suite" ]]; then
    case "$version" in
        535.261.03) suite=bookworm ;;
        550.163.01) suite=trixie ;;
        *)
            echo "no Debian suite is known for nvidia-cuda-mps $version; name it as $version@SUITE" >&2
            exit 1
            ;;
    esac
fi
if [[ ! "$version" =~ ^[0-9][0-9.]*$ || ! "$suite" =~ ^[a-z-]+$ ]]; then
    echo "malformed version $version_spec: write e.g. 535.261.03 or 535.261.03@bookworm" >&2
    exit 1
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${GPUSLICE_NVIDIA_MPS_CACHE:-$repo/.cache/nvidia-mps}"
target="$cache/$version"
program="$target/usr/bin/nvidia-cuda-mps-control"
if [[ -x "$program" ]]; then
    echo "$program"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is not installed: fetching Debian's nvidia-cuda-mps needs Debian's apt and dpkg" >&2
        exit 1
    fi
done
keyring="${GPUSLICE_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
if [[ ! -r "$keyring" ]]; then
    echo "Debian's archive keyring $keyring is missing: install the debian-archive-keyring package" >&2
    exit 1
fi
mirror="${GPUSLICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/unpacked"
echo "deb [signed-by=$keyring] $mirror $suite non-free" >"$work/sources.list"
: >"$work/status"
apt_options=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=$work/parts"
    -o "Dir::State=$work"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::State::status=$work/status"
    -o "Dir::Cache=$work"
    -o "Dir::Cache::archives=$work/archives"
    -o "Debug::NoLocking=1"
)
if [[ "$(id -u)" == 0 ]]; then
    # apt would drop to the _apt user to download, which cannot write into this folder.
    apt_options+=(-o "APT::Sandbox::User=root")
fi

if ! apt-get "${apt_options[@]}" -q update >"$work/update.log" 2>&1; then
    echo "apt-get update of $mirror $suite non-free failed:" >&2
    tail -n 5 "$work/update.log" >&2
    exit 1
fi
if grep -qE '^(W|E): ' "$work/update.log"; then
    # A signature or hash that does not check out is only a warning to apt-get update.
    echo "apt-get update of $mirror $suite non-free reported problems:" >&2
    grep -E '^(W|E): ' "$work/update.log" >&2
    exit 1
fi
debian_version="$(apt-cache "${apt_options[@]}" show nvidia-cuda-mps 2>/dev/null |
    awk -v want="$version" '/^Version: /{ v = $2; sub(/-[^-]*$/, "", v); if (v == want) { print $2; exit } }')"
if [[ -z "$debian_version" ]]; then
    echo "Debian $suite non-free has no nvidia-cuda-mps $version (it has:" \
        "$(apt-cache "${apt_options[@]}" show nvidia-cuda-mps 2>/dev/null | awk '/^Version: /{print $2}' | tr '\n' ' '))" >&2
    exit 1
fi
if ! (cd "$work" && apt-get "${apt_options[@]}" -q download "nvidia-cuda-mps=$debian_version") \
    >"$work/download.log" 2>&1; then
    echo "apt-get download nvidia-cuda-mps=$debian_version failed:" >&2
    tail -n 5 "$work/download.log" >&2
    exit 1
fi
deb="$(ls "$work"/nvidia-cuda-mps_*.deb)"
dpkg-deb -x "$deb" "$work/unpacked"
sha256sum "$deb" | awk '{print $1}' >"$work/unpacked/nvidia-cuda-mps.deb.sha256"
echo "$debian_version $suite $mirror" >"$work/unpacked/nvidia-cuda-mps.source"
if [[ ! -x "$work/unpacked/usr/bin/nvidia-cuda-mps-control" ]]; then
    echo "$deb holds no usr/bin/nvidia-cuda-mps-control" >&2
    exit 1
fi
# Another run may have finished first; either copy is the same package.
if ! mv -T "$work/unpacked" "$target" 2>/dev/null && [[ ! -x "$program" ]]; then
    echo "cannot move the unpacked package to $target" >&2
    exit 1
fi
echo "$program"
