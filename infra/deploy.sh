#!/bin/sh
# Create qwbatch's work pool and queues (if missing) and deploy every deployment of
# infra/prefect.yaml. Run from the repository root (or /opt/qwbatch in the image) with
# PREFECT_API_URL and PREFECT_API_AUTH_STRING set:
#
#   sh infra/deploy.sh [pool name] [pool type]        (default: qwbatch-process process)
#
# The pool named here must be the one infra/prefect.yaml selects (definitions.pool).
set -eu

POOL="${1:-qwbatch-process}"
TYPE="${2:-process}"
# Runs of whole manifests wait for their shards: cap them below the workers' total slots.
RUNS_LIMIT="${QWBATCH_RUNS_QUEUE_LIMIT:-2}"

# Create the pool unless it exists (an existing pool keeps its base job template).
if ! created=$(prefect work-pool create "$POOL" --type "$TYPE" 2>&1); then
    case "$created" in
        *"already exists"*) echo "work pool $POOL exists" ;;
        *) echo "$created" >&2; exit 1 ;;
    esac
fi
prefect --no-prompt deploy --prefect-file infra/prefect.yaml --all
prefect work-queue set-concurrency-limit runs "$RUNS_LIMIT" --pool "$POOL"
