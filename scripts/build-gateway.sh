#!/usr/bin/env bash
# Build the partner REST/JSON gateway (grpc-gateway v1.6.4 from Debian packages, offline) from
# the google.api.http annotations in protos/.
#
# Usage: scripts/build-gateway.sh [--check-tools] [--no-openapi-copy] [OUT_DIR]
#   OUT_DIR (default build/gateway) receives
#     gateway            the binary (see gateway/main.go for its flags)
#     openapi/...        Swagger 2.0 documents, one per proto file that declares services
#   and, unless --no-openapi-copy, the documents also replace generated/openapi/ (committed;
#   `make proto-check` fails when they are stale).
#   --check-tools      only check the toolchain.
# Exit 3 when the toolchain is missing: install it with scripts/install-gateway-deps.sh.
set -euo pipefail

check_only=false
copy_openapi=true
out_arg=""
for arg in "$@"; do
  case "$arg" in
    --check-tools) check_only=true ;;
    --no-openapi-copy) copy_openapi=false ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "build-gateway.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *)
      [ -z "$out_arg" ] || { echo "build-gateway.sh: only one OUT_DIR may be given" >&2; exit 2; }
      out_arg=$arg ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${out_arg:-$ROOT/build/gateway}")
BIN=/usr/bin                    # Debian's tools only: a newer protoc-gen-go on PATH would not fit
GOCODE=/usr/share/gocode
GA=$GOCODE/src/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis

missing=()
for tool in protoc protoc-gen-go protoc-gen-grpc-gateway protoc-gen-swagger go python3; do
  [ -x "$BIN/$tool" ] || missing+=("$BIN/$tool")
done
for dir in "$GA" /usr/include/google/protobuf "$GOCODE/src/github.com/grpc-ecosystem/grpc-gateway/runtime" \
  "$GOCODE/src/google.golang.org/grpc" "$GOCODE/src/google.golang.org/genproto/googleapis/api/annotations"; do
  [ -d "$dir" ] || missing+=("$dir")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-gateway.sh: the gateway toolchain is missing (${missing[*]});" \
    "install it with scripts/install-gateway-deps.sh (Debian packages)" >&2
  exit 3
fi
$check_only && exit 0

cd "$ROOT"
export LC_ALL=C
mkdir -p "$(dirname "$OUT")"
exec 9>"$OUT.lock" # concurrent builds into one OUT_DIR take turns
flock 9
GP=$OUT/gopath
rm -rf "$GP" "$OUT/openapi"
mkdir -p "$GP/src/cinemagw/cmd/gateway" "$OUT/openapi"

# Go import paths of the imported google protos, matching the Debian Go packages
# (golang/protobuf 1.3.5 and genproto 2020): protoc 3.21's own go_package options would point
# at APIv2 packages (timestamppb, ...) that the 1.3.5 runtime cannot use.
M="Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations"
M="$M,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations"
M="$M,Mgoogle/api/field_behavior.proto=google.golang.org/genproto/googleapis/api/annotations"
M="$M,Mgoogle/type/date.proto=google.golang.org/genproto/googleapis/type/date"
M="$M,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp"
M="$M,Mgoogle/protobuf/duration.proto=github.com/golang/protobuf/ptypes/duration"
M="$M,Mgoogle/protobuf/empty.proto=github.com/golang/protobuf/ptypes/empty"
M="$M,Mgoogle/protobuf/wrappers.proto=github.com/golang/protobuf/ptypes/wrappers"
M="$M,Mgoogle/protobuf/any.proto=github.com/golang/protobuf/ptypes/any"
M="$M,Mgoogle/protobuf/struct.proto=github.com/golang/protobuf/ptypes/struct"
M="$M,Mgoogle/protobuf/field_mask.proto=google.golang.org/genproto/protobuf/field_mask"
M="$M,Mgoogle/protobuf/descriptor.proto=github.com/golang/protobuf/protoc-gen-go/descriptor"
PLUGINS=(--plugin=protoc-gen-go="$BIN/protoc-gen-go" --plugin=protoc-gen-grpc-gateway="$BIN/protoc-gen-grpc-gateway"
  --plugin=protoc-gen-swagger="$BIN/protoc-gen-swagger")
# third_party/ (the vendored, newer google/api and google/type protos) wins over the gateway's copies.
INC=(-Iprotos -Ithird_party -I"$GA" -I/usr/include)

# protoc-gen-go 1.3.5 refuses files of different Go packages in one run ("inconsistent package
# import paths"): one run per proto directory. Directories without services (cinema/access,
# cinema/common) are imported by the others and are generated too.
for dir in $(cd protos && find . -name '*.proto' -printf '%h\n' | sed 's|^\./||' | sort -u); do
  "$BIN/protoc" "${INC[@]}" "${PLUGINS[@]}" \
    --go_out=plugins=grpc,"$M":"$GP/src" \
    --grpc-gateway_out=logtostderr=true,"$M":"$GP/src" \
    --swagger_out=logtostderr=true:"$OUT/openapi" \
    $(find "protos/$dir" -maxdepth 1 -name '*.proto' | sort)
done
# v1.6.4's generated handlers rewrite every FieldMask path to Go's CamelCase before forwarding
# (display_name -> DisplayName, grpc-ecosystem/grpc-gateway#1034); the server wants proto names.
find "$GP/src/cinemagw/gen" -name '*.pb.gw.go' -exec sed -i '/runtime\.CamelCaseFieldMask(/d' {} +
# The google.rpc error detail types the server sends (see gateway/proto/google/rpc/).
"$BIN/protoc" -Igateway/proto -I/usr/include "${PLUGINS[@]}" \
  --go_out="$M":"$GP/src" gateway/proto/google/rpc/error_details.proto

# Only documents with operations are published (access.proto and money.proto have none).
find "$OUT/openapi" -name '*.swagger.json' -print0 | xargs -0 -r grep -l -F '"paths": {}' | xargs -r rm -f
find "$OUT/openapi" -type d -empty -delete
# v1.6.4 writes "version not set" and the file name as the title: the service's name, its
# comment, the API version and the bearer-token scheme (public RPCs marked as needing none).
"$BIN/python3" scripts/openapi_metadata.py "$OUT/openapi" protos

# services.go: every service declared in protos/, registered by main.go.
services=$(
  find protos -name '*.proto' | sort | while read -r file; do
    awk -v file="$file" '
      /^package / { pkg = $2; sub(/;.*/, "", pkg) }
      /^option go_package/ { match($0, /"[^"]*"/); gp = substr($0, RSTART + 1, RLENGTH - 2) }
      /^service / {
        if (gp !~ /;/) { print "build-gateway.sh: " file " needs option go_package = \"cinemagw/gen/<dir>;<alias>\"" > "/dev/stderr"; exit 1 }
        split(gp, parts, ";"); print parts[1], parts[2], pkg "." $2, $2
      }' "$file"
  done
)
{
  echo "// Code generated by scripts/build-gateway.sh from protos/. DO NOT EDIT."
  echo
  echo "package main"
  echo
  echo "import ("
  echo "$services" | awk 'NF { print "\t" $2 " \"" $1 "\"" }' | sort -u
  echo ")"
  echo
  echo "var services = []service{"
  echo "$services" | awk 'NF { print "\t{\"" $3 "\", " $2 ".Register" $4 "HandlerFromEndpoint}," }'
  echo "}"
} >"$GP/src/cinemagw/cmd/gateway/services.go"
cp gateway/main.go "$GP/src/cinemagw/cmd/gateway/main.go"

# GOPATH mode (Debian has no module proxy); CGO off: a static binary, no C compiler needed.
go_env=(GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0 GOPATH="$GP:$GOCODE")
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  go_env+=(GOCACHE="$OUT/go-cache")
fi
env "${go_env[@]}" "$BIN/go" build -trimpath -o "$OUT/gateway.new" cinemagw/cmd/gateway
mv -f "$OUT/gateway.new" "$OUT/gateway"

if $copy_openapi; then
  staging=$(mktemp -d "$ROOT/generated/.openapi.XXXXXX")
  cp -R "$OUT/openapi/." "$staging/"
  chmod -R u=rwX,go=rX "$staging"
  rm -rf "$ROOT/generated/openapi"
  mv "$staging" "$ROOT/generated/openapi"
fi
echo "built $OUT/gateway ($(echo "$services" | awk 'NF' | wc -l) services); OpenAPI in $OUT/openapi$($copy_openapi && echo " and generated/openapi")"
