#!/usr/bin/env bash
# Layer check: dependencies point down (see the module list in src/lib.rs).
#  - Pingora types only in the adapters: proxy, admin, server, the background services and
#    the config's TLS check.
#  - Each module imports only from the layers below it.
# Prints every violation (file:line: text) and exits 1 when there is one.
set -uo pipefail
cd "$(dirname "$0")/.."

fail=0
report() { # $1 rule, then grep output lines
    local rule=$1; shift
    local hits=$1
    [ -z "$hits" ] && return 0
    printf 'layer check: %s\n%s\n' "$rule" "$hits" >&2
    fail=1
}

# Code lines only: drop `//` comments so prose may name Pingora or a module.
code_grep() { # $1 extended regex, rest: paths
    local re=$1; shift
    grep -rnE --include='*.rs' "$re" "$@" 2>/dev/null | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true
}

# Files allowed to name Pingora crates.
pingora_ok='^src/(proxy/|admin/|services/|server\.rs|server/|config/tls\.rs|main\.rs|bin/)'
hits=$(code_grep '(^|[^A-Za-z0-9_-])pingora(_[a-z_]+)?::' src | grep -vE "$pingora_ok" || true)
report "pingora used outside the adapters (proxy, admin, services, server, config/tls.rs)" "$hits"

# module (dir or file under src/) : modules it must not import.
leaf='config|errors|state|proxy|admin|server|services|routing|accesslog|metrics'
rules=(
    "diagnostics:$leaf|auth|fleet|rules|ratelimit|metering|upstream_error"
    "estimate:$leaf|auth|fleet|rules|ratelimit|metering|upstream_error|diagnostics"
    "client_request_id:$leaf|auth|fleet|rules|ratelimit|metering|upstream_error|diagnostics"
    "usage_totals:$leaf|auth|fleet|rules|ratelimit|metering|upstream_error"
    "upstream_error:$leaf|auth|fleet|rules|metering"
    "ratelimit:$leaf|auth|fleet|rules|metering"
    "metering:$leaf|auth|fleet|rules|ratelimit"
    "rules:$leaf|auth|fleet|metering"
    "fleet:$leaf|auth|rules|metering"
    "auth:$leaf|fleet|rules|metering"
    "ollama:$leaf|auth|fleet|rules|ratelimit|upstream_error"
    "routing:errors|state|proxy|admin|server|services|accesslog|metrics"
    "config:errors|state|proxy|admin|server|services|accesslog|metrics"
    "errors:state|proxy|admin|server|services|accesslog|metrics|config"
    "metrics:state|proxy|admin|server|services"
    "accesslog:state|proxy|admin|server|services|recent|events"
    "recent:state|proxy|admin|server|services|metrics|events"
    "events:state|proxy|admin|server|services|metrics|accesslog|recent|config"
    "state:proxy|admin|server|services"
    "proxy:admin|server|services"
    "admin:proxy|server|services"
    "services:proxy|admin|server"
)
for rule in "${rules[@]}"; do
    module=${rule%%:*}
    banned=${rule#*:}
    paths=()
    [ -d "src/$module" ] && paths+=("src/$module")
    [ -f "src/$module.rs" ] && paths+=("src/$module.rs")
    [ ${#paths[@]} -eq 0 ] && continue
    hits=$(code_grep "crate::($banned)\\b" "${paths[@]}")
    report "$module imports from a layer above it ($banned)" "$hits"
done

# Every module is listed in lib.rs's layer doc.
for m in $(grep -oE '^pub mod [a-z_]+' src/lib.rs | awk '{print $3}'); do
    grep -qE "^//!.*\[\`$m\`\]" src/lib.rs || report "src/lib.rs: module not in the layer list" "$m"
done

[ $fail -eq 0 ] && echo "layer check: ok"
exit $fail
