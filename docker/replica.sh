#!/usr/bin/env bash
# A replica: on first start, clones the writer (pg_basebackup -R writes the
# standby settings; the rest comes from the writer's postgresql.conf), then
# runs it in the foreground.
set -euo pipefail
data=${PGDATA:-/var/lib/postgresql/data}
if [ ! -s "$data/PG_VERSION" ]; then
  pg_basebackup -h writer -U postgres -D "$data" -R -X stream --checkpoint=fast
  chmod 0700 "$data"
fi
exec postgres -D "$data" -c hot_standby=on
