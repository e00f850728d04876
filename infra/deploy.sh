#!/bin/sh
# Create qwbatch's work pool and queues (if missing) and deploy the deployments of
# infra/prefect.yaml. Run from the repository root (or /opt/qwbatch in the image) with
# PREFECT_API_URL and PREFECT_API_AUTH_STRING set:
#
#   sh infra/deploy.sh [pool name] [pool type]        (default: qwbatch-process process)
#
# The pool named here must be the one infra/prefect.yaml selects (definitions.pool).
# The nightly deployment is deployed only when QWBATCH_NIGHTLY_MANIFEST and
# QWBATCH_NIGHTLY_OUT are set (prefect.yaml reads them now, at deploy time): without them it
# would be an active schedule with empty parameters that fails every night. The others are
# deployed either way. `prefect` is taken from PATH, else from .venv/bin.
set -eu

POOL="${1:-qwbatch-process}"
TYPE="${2:-process}"
# Runs of whole manifests wait for their shards: cap them below the workers' total slots.
RUNS_LIMIT="${QWBATCH_RUNS_QUEUE_LIMIT:-2}"
PREFECT_FILE=infra/prefect.yaml
NIGHTLY=nightly-catalog

if command -v prefect >/dev/null 2>&1; then
    PREFECT=prefect
elif [ -x .venv/bin/prefect ]; then
    PREFECT=.venv/bin/prefect
else
    echo "deploy.sh: no prefect on PATH or in .venv/bin (run make setup, or activate a venv)" >&2
    exit 1
fi

# Create the pool unless it exists (an existing pool keeps its base job template).
if ! created=$("$PREFECT" work-pool create "$POOL" --type "$TYPE" 2>&1); then
    case "$created" in
        *"already exists"*) echo "work pool $POOL exists" ;;
        *) echo "$created" >&2; exit 1 ;;
    esac
fi
if [ -n "${QWBATCH_NIGHTLY_MANIFEST:-}" ] && [ -n "${QWBATCH_NIGHTLY_OUT:-}" ]; then
    "$PREFECT" --no-prompt deploy --prefect-file "$PREFECT_FILE" --all
else
    echo "skipping $NIGHTLY: set QWBATCH_NIGHTLY_MANIFEST and QWBATCH_NIGHTLY_OUT to deploy it"
    # Every deployment name in the file but the nightly one, as --name arguments.
    set --
    for name in $(sed -n 's/^  - name: *//p' "$PREFECT_FILE"); do
        [ "$name" = "$NIGHTLY" ] || set -- "$@" --name "$name"
    done
    "$PREFECT" --no-prompt deploy --prefect-file "$PREFECT_FILE" "$@"
fi
"$PREFECT" work-queue set-concurrency-limit runs "$RUNS_LIMIT" --pool "$POOL"
