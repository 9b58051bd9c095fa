#!/usr/bin/env bash
# docker-compose.haproxy.yml on a real Docker engine: the stack with `--scale ingress=3` behind
# HAProxy, 30 messages from the host through HAProxy, then checks that all three ingress replicas
# took sessions, that each message reached the demo primary once, and that our Received header
# names the client HAProxy saw (Docker's gateway, as traffic from the host arrives) and not
# HAProxy's own address. Then `down -v`.
#
# On a machine without an image registry it runs on the stand-ins (/work/shared/docker-standins,
# plus a HAProxy stand-in from Debian's package: test/support/haproxy-standin.sh), with Debian's
# compose v1, which has no `!reset`: a copy of the override without that line is used and every
# ingress replica gets a random loopback port of its own instead of none. Not part of `npm test`
# (it builds images: minutes). Usage, from the project's root: bash test/compose-haproxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
standins=${STANDINS:-../shared/docker-standins}
[ -x "$standins/compose.sh" ] || { echo "compose-haproxy: no $standins/compose.sh (set STANDINS)" >&2; exit 69; }
bash test/support/haproxy-standin.sh
copy=$(mktemp --suffix=.yml)
trap 'rm -f "$copy"' EXIT
sed '/ports: !reset \[\]/d' docker-compose.haproxy.yml > "$copy"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-bmxhaproxy} STANDIN_COMPOSE_FILES=$copy SMTP_PUBLIC_PORT=127.0.0.1:
# Web UIs on ports of their own, so that another stack on this machine does not collide.
export RABBITMQ_UI_PORT=21672 JAEGER_UI_PORT=21686 MAILPIT_UI_PORT=21025 PROMETHEUS_UI_PORT=21090 GRAFANA_UI_PORT=21030
compose() { "$standins/compose.sh" --profile demo "$@"; }
fail() { echo "compose-haproxy: FAIL: $*" >&2; compose logs --tail 30 haproxy ingress >&2 || true; compose down -v >/dev/null 2>&1 || true; exit 1; }
compose up -d --build --scale ingress=3
for _ in $(seq 1 120); do
  [ "$(compose ps ingress 2>/dev/null | grep -c '(healthy)')" = 3 ] && break
  sleep 5
done
[ "$(compose ps ingress | grep -c '(healthy)')" = 3 ] || fail "three healthy ingress replicas"
address=$(compose port haproxy 2525)
sleep 10 # HAProxy's health checks (every 5 s) mark the replicas up
smtp-source -s 6 -m 30 -l 512 -f sender@origin.test -t user@example.test "$address" || fail "smtp-source through HAProxy"
sleep 20
per=$(for n in 1 2 3; do docker logs "${COMPOSE_PROJECT_NAME}_ingress_$n" 2>&1 | grep -c '"msg":"message accepted"' || true; done | tr '\n' ' ')
echo "compose-haproxy: messages accepted per ingress replica: $per"
for n in $per; do [ "$n" -gt 0 ] || fail "every replica took sessions ($per)"; done
haproxy_ip=$(docker exec "${COMPOSE_PROJECT_NAME}_haproxy_1" hostname -i | tr -d ' ')
# Our Received header is the one followed by "by ... (backupmx)"; smtp-sink adds its own above it.
clients=$(docker exec "${COMPOSE_PROJECT_NAME}_mailpit_1" sh -c 'cat /sink/*' | awk '/^Received: from/{line=$0; next} /\(backupmx\)/{sub(/.*\(\[/, "", line); sub(/\]\).*/, "", line); print line}' | sort | uniq -c | tr -s ' \n' ' ')
echo "compose-haproxy: clients named in our Received headers at the primary: $clients (HAProxy is $haproxy_ip)"
delivered=$(docker exec "${COMPOSE_PROJECT_NAME}_mailpit_1" sh -c 'ls /sink | wc -l')
[ "$delivered" = 30 ] || fail "30 messages at the primary, got $delivered"
echo "$clients" | grep -q "$haproxy_ip" && fail "a Received header names HAProxy ($haproxy_ip), not the client"
compose down -v
echo "compose-haproxy: ok"
