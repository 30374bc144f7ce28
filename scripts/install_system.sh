#!/usr/bin/env bash
# Install the system packages that pip cannot: Java 17+ for TorchServe, a C/C++ compiler for
# building llama-cpp-python, and (with --browser) Chromium and an emoji font for the browser tests.
# Idempotent: prints nothing and installs nothing when everything is present.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--browser] [--java-version N]

Installs with apt-get (Debian/Ubuntu) whatever of these is missing:
  Java >= N (default 17)      openjdk-N-jre-headless, for TorchServe
  a C and C++ compiler        build-essential, to build llama-cpp-python
  --browser                   chromium and fonts-noto-color-emoji, for the browser tests
Uses sudo only when not run as root.  Elsewhere it says what to install by hand.
USAGE
}

browser=0
java_min=17
while [[ $# -gt 0 ]]; do
  case "$1" in
    --browser) browser=1; shift ;;
    --java-version) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; java_min=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

java_major() {
  # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' or '"1.8.0_392"' on stderr.
  local line version
  line=$(java -version 2>&1 | grep -m1 -Eo 'version "[^"]+"') || return 1
  version=${line#version \"}
  version=${version%\"}
  if [[ $version == 1.* ]]; then
    version=${version#1.}
  fi
  echo "${version%%[.+_-]*}"
}

packages=()
if ! command -v java >/dev/null 2>&1; then
  packages+=("openjdk-$java_min-jre-headless")
else
  major=$(java_major || echo 0)
  if ! [[ $major =~ ^[0-9]+$ ]] || ((major < java_min)); then
    echo "Java $major is older than the $java_min TorchServe needs."
    packages+=("openjdk-$java_min-jre-headless")
  fi
fi
if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
  packages+=(build-essential)
fi
if [[ $browser -eq 1 ]]; then
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  if command -v fc-list >/dev/null 2>&1; then
    fc-list 2>/dev/null | grep -qi 'Noto Color Emoji' || packages+=(fonts-noto-color-emoji)
  elif ! dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; then
    packages+=(fonts-noto-color-emoji)
  fi
fi

[[ ${#packages[@]} -gt 0 ]] || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: please install ${packages[*]} (or the equivalent for this system) and run again" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "error: need root (or sudo) to install ${packages[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi
echo "Installing system packages: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
${sudo[@]+"${sudo[@]}"} apt-get update -qq
${sudo[@]+"${sudo[@]}"} apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "Installed: ${packages[*]}"
