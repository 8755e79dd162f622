#!/usr/bin/env bash
# Lets replicas stream from the primary with the postgres password.
set -euo pipefail
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
