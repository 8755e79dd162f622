#!/usr/bin/env bash
# The writer: on first start, creates its cluster with scram passwords
# (the postgres role's from PGPASSWORD) and streaming replication on;
# then runs PostgreSQL in the foreground. Needs only PostgreSQL's
# binaries, not the official image's entrypoint.
set -euo pipefail
data=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "$data/PG_VERSION" ]; then
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "${PGPASSWORD:-postgres}" > "$pwfile"
  # Peer over the socket (pg_isready and psql in the container), scram
  # over TCP.
  initdb -D "$data" -U postgres --pwfile="$pwfile" \
    --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8
  rm -f "$pwfile"
  # Clients and replicas connect from other containers.
  cat >> "$data/pg_hba.conf" <<'HBA'
host all all all scram-sha-256
host replication all all scram-sha-256
HBA
  # Replicas inherit these through pg_basebackup.
  cat >> "$data/postgresql.conf" <<'CONF'
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
hot_standby = on
wal_keep_size = 256MB
CONF
fi
exec postgres -D "$data"
