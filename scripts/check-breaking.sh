#!/usr/bin/env bash
# buf breaking: the contract in the working tree against the previous commit (FILE rules).
# buf clones the local .git, so it sees local refs only; a shallow clone needs one more commit.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  git fetch --quiet --deepen 1 2>/dev/null || true
fi
if ! git rev-parse --verify --quiet HEAD~1 >/dev/null; then
  echo "buf breaking: no previous commit to compare with; skipped"
  exit 0
fi
if ! git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  echo "buf breaking: the previous commit has no buf module; skipped"
  exit 0
fi
"$BUF" breaking --against '.git#ref=HEAD~1'
echo "buf breaking: no breaking change against HEAD~1"
