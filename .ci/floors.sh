#!/usr/bin/env bash
# The engine-side floors point one way (load/ -> models/ -> backend/): nothing under src/load
# names the floors above it or the server and config, nothing under src/models names the backend
# or the server. Prints every offending line and fails when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() {
    local dir=$1 pattern=$2
    if grep -rnE "$pattern" "$dir" --include='*.rs'; then
        echo "floors: $dir must not name $pattern (see README's Layout)" >&2
        status=1
    fi
}
check src/load 'crate::(models|backend|server|config)\b'
check src/models 'crate::(backend|server)\b'
exit $status
