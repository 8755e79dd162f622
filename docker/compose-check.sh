#!/usr/bin/env bash
# Proves docker-compose.yml as CI runs it: starts the writer and two
# replicas in a compose project of its own, with the image that
# docker/build-image.sh builds (or PG_IMAGE when set), waits until both
# replicas stream, runs the quickstart with the README's variables, and
# checks from the replicas' own counters that its reads reached both.
# The project is always taken down, containers, network and volumes,
# also after a failure.
#
#   [PG_IMAGE=tag] docker/compose-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The README's addresses are fixed: say so plainly when one is taken.
for port in 5432 5433 5434; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "compose-check: port $port is in use; docker-compose.yml publishes 5432-5434" >&2
    exit 1
  fi
done

if [ -z "${PG_IMAGE:-}" ]; then
  PG_IMAGE=$(docker/build-image.sh | tail -n 1)
fi
export PG_IMAGE
project=diesel-replica-check-$$
compose() { docker-compose -p "$project" "$@"; }

down() {
  echo "== docker-compose down -v ($project)" >&2
  compose down -v --remove-orphans >&2 || true
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
echo "== docker-compose up -d ($project, PG_IMAGE=$PG_IMAGE)" >&2
compose up -d >&2

sql() { compose exec -T "$1" psql -X -U postgres -d postgres -Atc "$2"; }
fail() {
  echo "compose-check: $1" >&2
  compose ps >&2 || true
  compose logs --no-color --tail=30 >&2 || true
  exit 1
}

# up -d waits for the writer to be healthy before starting the replicas,
# not for the replicas themselves.
for _ in $(seq 120); do
  healthy=0
  for service in writer replica-1 replica-2; do
    id=$(compose ps -q "$service")
    status=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || true)
    [ "$status" = healthy ] && healthy=$((healthy + 1))
  done
  [ "$healthy" = 3 ] && break
  sleep 1
done
[ "$healthy" = 3 ] || fail "$healthy of 3 servers healthy after 120 s"

for _ in $(seq 60); do
  streaming=$(sql writer "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
  [ "$streaming" = 2 ] && break
  sleep 1
done
[ "$streaming" = 2 ] || fail "$streaming of 2 replicas streaming after 60 s"
echo "== 3 servers healthy, 2 replicas streaming, in $((SECONDS - started)) s" >&2

# Scans of quickstart_notes on a replica: only the quickstart's reads make
# them. The library's own queries there (health checks, the lag monitor,
# discovery) read no user table, and replaying the writer's inserts scans
# nothing, so xact counts in pg_stat_database would move without a read.
# The quickstart's two reads at once go one to each replica (least in
# flight, the default), so both counts move on every run; its other reads
# go to either replica at random.
scans="SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)
         FROM pg_stat_user_tables WHERE relname = 'quickstart_notes'"
before1=$(sql replica-1 "$scans")
before2=$(sql replica-2 "$scans")

echo "== cargo run --example quickstart (the README's variables)" >&2
DATABASE_URL=postgres://postgres:postgres@localhost:5432/postgres \
DATABASE_REPLICA_HOSTS=localhost:5433,localhost:5434 \
  cargo run --example quickstart

# A backend reports its counts when its transaction ends (at most once a
# second) or when it exits: wait for the quickstart's closed connections.
for _ in $(seq 20); do
  after1=$(sql replica-1 "$scans")
  after2=$(sql replica-2 "$scans")
  [ "$after1" -gt "$before1" ] && [ "$after2" -gt "$before2" ] && break
  sleep 0.5
done
echo "scans of quickstart_notes: replica-1 $before1 -> $after1, replica-2 $before2 -> $after2"
[ "$after1" -gt "$before1" ] || fail "no read reached replica-1"
[ "$after2" -gt "$before2" ] || fail "no read reached replica-2"
echo "compose-check: ok, reads reached both replicas ($((SECONDS - started)) s)"
