"""Completes the Swagger 2.0 documents protoc-gen-swagger (v1.6.4) writes: a title, the API
version and a description taken from the service's comment in its proto, the bearer-token
security scheme, and which operations need it (from each RPC's access policy).

    python3 scripts/openapi_metadata.py OPENAPI_DIR PROTOS_DIR

Standard library only: it runs wherever build-gateway.sh runs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SECURITY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": (
        "`Bearer <access token>`: the access_token of POST /v1/sessions (Login) or "
        "POST /v1/sessions:refresh (RefreshToken). Access tokens live 15 minutes; an expired one "
        "is refused with 401 and reason TOKEN_EXPIRED: refresh it."
    ),
}
ERRORS = (
    'Errors are JSON: {"error", "message", "code", "details"}, where code is the gRPC code and '
    "details hold the google.rpc details, always an ErrorInfo with a stable reason (domain cinema)."
)
_SERVICE = re.compile(r"((?:^//.*\n)*)^service (\w+) \{", re.M)
_RPC = re.compile(r"^\s*rpc (\w+)\(", re.M)


def service_docs(proto: str) -> tuple[str, str]:
    """The first service of a proto file and its leading comment."""
    found = _SERVICE.search(proto)
    if found is None:
        return "", ""
    comment = "\n".join(line.removeprefix("//").strip() for line in found.group(1).splitlines())
    return found.group(2), re.sub(r"(?<!\n)\n(?!\n)", " ", comment.strip())


def public_rpcs(proto: str) -> set[str]:
    """RPCs whose access policy is AUDIENCE_PUBLIC: they need no token."""
    starts = list(_RPC.finditer(proto))
    public = set()
    for i, rpc in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(proto)
        if "AUDIENCE_PUBLIC" in proto[rpc.end() : end]:
            public.add(rpc.group(1))
    return public


def complete(document: dict[str, object], proto: str, package: str) -> dict[str, object]:
    service, comment = service_docs(proto)
    version = package.rsplit(".", 1)[-1]
    document["info"] = {
        "title": f"{package}.{service}",
        "version": version,
        "description": f"{comment}\n\n{ERRORS}",
    }
    document["securityDefinitions"] = {"bearer": SECURITY_SCHEME}
    document["security"] = [{"bearer": []}]
    public = public_rpcs(proto)
    paths = document.get("paths", {})
    assert isinstance(paths, dict)
    for operations in paths.values():
        for operation in operations.values():
            if operation.get("operationId") in public:
                operation["security"] = []  # anonymous callers welcome
    return document


def main(openapi_dir: Path, protos_dir: Path) -> None:
    for path in sorted(openapi_dir.rglob("*.swagger.json")):
        relative = path.relative_to(openapi_dir)
        proto_path = protos_dir / relative.parent / relative.name.replace(".swagger.json", ".proto")
        proto = proto_path.read_text()
        package = re.search(r"^package ([\w.]+);", proto, re.M)
        if package is None:
            raise SystemExit(f"{proto_path}: no package")
        document = json.loads(path.read_text())
        completed = complete(document, proto, package.group(1))
        path.write_text(json.dumps(completed, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
