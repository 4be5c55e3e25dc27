#!/usr/bin/env bash
# Run any command in the mounted checkout (default: dvc repro). DVC's cache lives on a volume so
# rebuilding the container keeps data, checkpoints and models.
set -euo pipefail
if [ -d .dvc ] && [ -n "${DVC_CACHE_DIR:-}" ]; then
  dvc config --local cache.dir "$DVC_CACHE_DIR" >/dev/null
fi
exec "$@"
