#!/usr/bin/env bash
# Install the toolchain of the REST/JSON gateway (scripts/build-gateway.sh) from Debian packages:
# Go 1.19, grpc-gateway v1.6.4 and its Go sources, grpc-go, golang/protobuf 1.3.5, genproto, protoc.
# Does nothing when they are installed. Non-interactive; uses sudo unless run as root.
# Debian 12 (bookworm) is what it is verified on; other apt-based systems may carry other versions.
set -euo pipefail

PACKAGES=(
  golang-go
  golang-grpc-gateway                           # protoc-gen-grpc-gateway, protoc-gen-swagger
  golang-github-grpc-ecosystem-grpc-gateway-dev # its runtime package and google/api protos
  golang-google-grpc-dev
  golang-goprotobuf-dev                         # protoc-gen-go 1.3.5 (plugins=grpc)
  golang-google-protobuf-dev
  golang-google-genproto-dev
  protobuf-compiler
  libprotobuf-dev # google/protobuf/*.proto (only "recommended" by protobuf-compiler)
)

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "install-gateway-deps.sh: needs a Debian-based system with apt-get; install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "gateway toolchain already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-gateway-deps.sh: run as root or install sudo (needs: ${missing[*]})" >&2; exit 1; }
  sudo=(sudo)
  [ -t 0 ] || sudo+=(-n) # no terminal to ask a password on: fail instead of hanging
fi
echo "installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
