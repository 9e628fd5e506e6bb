#!/usr/bin/env bash
# Starts the servers the distributed tests talk to — PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) —
# when they are installed but not running. Missing servers are reported, not installed: those tests then skip
# with the reason on a developer's machine, and fail under CI (CI=true), where they must run.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() {
  for _ in $(seq 1 50); do up "$1" && return 0; sleep 0.2; done
  echo "services: $2 did not come up on port $1" >&2
  return 1
}
if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start && wait_up 5432 PostgreSQL
  else
    echo "services: PostgreSQL is not installed; the distributed tests will skip (or fail under CI)" >&2
  fi
fi
if ! up 6379; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log && wait_up 6379 Redis
  else
    echo "services: Redis is not installed; the distributed tests will skip (or fail under CI)" >&2
  fi
fi
exit 0
