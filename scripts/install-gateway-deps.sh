#!/usr/bin/env bash
# Install the toolchain of the REST/JSON gateway (scripts/build-gateway.sh) from Debian packages:
# Go 1.19, grpc-gateway v1.6.4 and its Go sources, grpc-go, golang/protobuf 1.3.5, genproto, protoc.
# Does nothing when they are installed. Non-interactive; uses sudo unless run as root (scripts/apt-install.sh).
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

exec "$(dirname "$0")/apt-install.sh" "gateway toolchain" "${PACKAGES[@]}"
