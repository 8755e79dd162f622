#!/usr/bin/env bash
# Clones the writer on first start (pg_basebackup -R writes the standby
# settings), then runs the replica.
set -euo pipefail
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
  pg_basebackup -h writer -U postgres -D "$data" -R -X stream --checkpoint=fast
  chmod 0700 "$data"
fi
exec postgres -D "$data" -c hot_standby=on
