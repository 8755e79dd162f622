#!/usr/bin/env bash
# Library direct vs through pgpool-II, side by side in one run (BENCHMARKS.md,
# "Library direct vs through pgpool-II").
#
# One throwaway cluster (a primary and 2 streaming replicas, held up by
# `loadgen --local 2 --hold-cluster`) and one pgpool-II in front of it
# (streaming replication mode, load balancing on, the primary's weight 0);
# then, in alternating order, rounds of the same load generator:
#   (a) through the library, straight to the nodes (DATABASE_URL and
#       DATABASE_REPLICA_URLS): reads round robin on the replicas, writes on
#       the primary;
#   (b) given only pgpool's endpoint (`loadgen --through URL`): the same
#       queries, bare, in autocommit, on a plain diesel-async pool; pgpool
#       decides where each runs.
# Prints each round's JSON, where pgpool sent the reads (SHOW POOL_NODES),
# and a summary: throughput, read p50/p99 and the ratios (a)/(b), and the
# CPU per operation of loadgen, the nodes and pgpool on each side.
#
# Installs Debian's pgpool2 with apt-get if `pgpool` is missing (needs
# root). Everything it starts and writes (pgpool, the cluster, a temp dir)
# is removed on exit, also on failure or Ctrl-C.
#
#   bench/pgpool.sh
#   # knobs (defaults shown)
#   BENCH_ROUNDS=5 BENCH_SECS=5 BENCH_CONCURRENCY=32 BENCH_READ_RATIO=0.9 bench/pgpool.sh
set -euo pipefail

rounds=${BENCH_ROUNDS:-5}
secs=${BENCH_SECS:-5}
concurrency=${BENCH_CONCURRENCY:-32}
read_ratio=${BENCH_READ_RATIO:-0.9}
root=$(cd "$(dirname "$0")/.." && pwd)

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/pgpool.sh: %s\n' "$*" >&2; exit 1; }

# --- pgpool-II ----------------------------------------------------------------
# Debian installs it in /usr/sbin, which a user's PATH may lack.
pgpool=$(command -v pgpool || true)
if [ -z "$pgpool" ] && [ -x /usr/sbin/pgpool ]; then pgpool=/usr/sbin/pgpool; fi
if [ -z "$pgpool" ]; then
  [ "$(id -u)" = 0 ] || die "pgpool is not installed and installing it needs root: apt-get install pgpool2"
  say "installing pgpool2 (pgpool not found)"
  export DEBIAN_FRONTEND=noninteractive
  # An old package list can name a version the mirror no longer has.
  apt-get install -y --no-install-recommends pgpool2 ||
    { apt-get update && apt-get install -y --no-install-recommends pgpool2; }
  pgpool=/usr/sbin/pgpool
fi
command -v psql >/dev/null || die "psql not found (it comes with pgpool2's postgresql-common and postgresql-client)"

# PostgreSQL, and so pgpool beside it, refuses to run as root: as root, run
# them as `postgres` (the testkit does the same for the cluster).
as_postgres=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root, but there is no postgres user to run pgpool as"
  as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# --- build --------------------------------------------------------------------
say "building loadgen (release)"
(cd "$root" && cargo build --release -p loadgen)
loadgen=${CARGO_TARGET_DIR:-$root/target}/release/loadgen

# --- clean-up, from here on ---------------------------------------------------
tmp=$(mktemp -d -t pgpool-bench.XXXXXX)
hold_pid=
pgpool_pid=

# Waits up to $2 seconds for process $1 to end; false if it did not.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

cleanup() {
  local status=$?
  set +e
  if [ -n "$pgpool_pid" ] && kill -0 "$pgpool_pid" 2>/dev/null; then
    # SIGINT: pgpool's fast shutdown (its children end with it).
    kill -INT "$pgpool_pid"
    if ! wait_gone "$pgpool_pid" 15; then
      say "pgpool did not stop in 15 s; killing it and its children"
      kill -KILL $(pgrep -P "$pgpool_pid") "$pgpool_pid" 2>/dev/null
    fi
    wait "$pgpool_pid" 2>/dev/null
  fi
  if [ -n "$hold_pid" ] && kill -0 "$hold_pid" 2>/dev/null; then
    # SIGTERM: loadgen stops the nodes and removes the cluster's directory.
    kill -TERM "$hold_pid"
    wait_gone "$hold_pid" 60 || say "the cluster's loadgen (pid $hold_pid) did not stop in 60 s"
    wait "$hold_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free TCP port found on 127.0.0.1"
}

# --- the cluster ---------------------------------------------------------------
say "starting a primary + 2 streaming replicas (loadgen --local 2 --hold-cluster)"
"$loadgen" --local 2 --hold-cluster "$tmp/cluster.env" >"$tmp/hold.out" 2>"$tmp/hold.log" &
hold_pid=$!
for ((i = 0; i < 1200; i++)); do
  [ -f "$tmp/cluster.env" ] && break
  kill -0 "$hold_pid" 2>/dev/null || { cat "$tmp/hold.log" >&2; die "the cluster did not start"; }
  sleep 0.1
done
[ -f "$tmp/cluster.env" ] || { cat "$tmp/hold.log" >&2; die "the cluster did not start in 120 s"; }
# DATABASE_URL, DATABASE_REPLICA_URLS, PGPASSWORD, LOADGEN_PRIMARY,
# LOADGEN_REPLICAS (host:port, comma-separated); shell variables, not
# exported: each command below is given what it needs.
# shellcheck disable=SC1091
. "$tmp/cluster.env"
IFS=, read -r -a replicas <<<"$LOADGEN_REPLICAS"
say "cluster: primary $LOADGEN_PRIMARY, replicas ${replicas[*]}"

# --- pgpool's configuration ------------------------------------------------------
pgdir=$tmp/pgpool
mkdir -p "$pgdir/oiddir"
pgpool_port=$(free_port)
pcp_port=$(free_port)
children=$((concurrency + 8))
{
  cat <<EOF
# bench/pgpool.sh: pgpool-II in front of the throwaway cluster
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $pgpool_port
socket_dir = '$pgdir'
pcp_listen_addresses = ''
pcp_port = $pcp_port
pcp_socket_dir = '$pgdir'
pid_file_name = '$pgdir/pgpool.pid'
logdir = '$pgdir'
memqcache_oiddir = '$pgdir/oiddir'
log_destination = 'stderr'
log_min_messages = warning

# Clients authenticate to pgpool as to the nodes (scram-sha-256 over TCP);
# pgpool logs in to the nodes with the password in pool_passwd.
enable_pool_hba = on
pool_passwd = 'pool_passwd'

# One child per client connection: every pooled connection of (b), plus
# room for psql. Each child keeps its backend connections (max_pool 1: one
# user and database).
num_init_children = $children
max_pool = 1
reserved_connections = 0
connection_cache = on

# Reads on the replicas only; a write in an explicit transaction keeps the
# rest of that transaction on the primary (the default), autocommit reads
# are balanced per session (the default, statement_level_load_balance off).
load_balance_mode = on
statement_level_load_balance = off
disable_load_balance_on_write = 'transaction'

# Which node is the primary, and replication delay, asked every 10 s as
# postgres (password from pool_passwd); no health checks and no failover:
# the bench measures routing, with every node up.
sr_check_period = 10
sr_check_user = 'postgres'
sr_check_password = ''
health_check_period = 0
failover_on_backend_error = off
EOF
  # Node 0, the primary, weight 0: it takes no load-balanced read.
  n=0
  for node in "$LOADGEN_PRIMARY" "${replicas[@]}"; do
    cat <<EOF
backend_hostname$n = '${node%:*}'
backend_port$n = ${node##*:}
backend_weight$n = $([ "$n" = 0 ] && echo 0 || echo 1)
backend_flag$n = 'DISALLOW_TO_FAILOVER'
EOF
    n=$((n + 1))
  done
} >"$pgdir/pgpool.conf"
cat >"$pgdir/pool_hba.conf" <<'EOF'
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
# The testkit's role and password, in clear text (pgpool's TEXT prefix):
# pgpool needs the password itself to answer the nodes' SCRAM.
(umask 077 && printf 'postgres:TEXT%s\n' "$PGPASSWORD" >"$pgdir/pool_passwd")
: >"$pgdir/pcp.conf"
if [ "${#as_postgres[@]}" -gt 0 ]; then
  chmod 0711 "$tmp" # pgpool (as postgres) reaches its directory, lists nothing
  chown -R postgres:postgres "$pgdir"
fi

# --- pgpool ----------------------------------------------------------------------
pgpool_version=$("$pgpool" --version 2>&1)
say "starting $pgpool_version on 127.0.0.1:$pgpool_port ($children children)"
# -n: in the foreground (here a background job, so its pid is pgpool's);
# -D: no pgpool_status from an earlier run.
"${as_postgres[@]}" "$pgpool" -n -D -f "$pgdir/pgpool.conf" -F "$pgdir/pcp.conf" \
  -a "$pgdir/pool_hba.conf" >"$tmp/pgpool.log" 2>&1 &
pgpool_pid=$!

# psql to pgpool, with the password in the environment only.
pgpool_psql() {
  PGPASSWORD=$PGPASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$pgpool_port" -U postgres -d postgres "$@"
}
for ((i = 0; i < 300; i++)); do
  pgpool_psql -At -c 'SHOW POOL_VERSION' >/dev/null 2>&1 && break
  kill -0 "$pgpool_pid" 2>/dev/null || { cat "$tmp/pgpool.log" >&2; die "pgpool exited"; }
  sleep 0.1
done
pgpool_psql -At -c 'SHOW POOL_VERSION' >/dev/null || { cat "$tmp/pgpool.log" >&2; die "pgpool does not answer"; }
say "pgpool's nodes"
pgpool_psql -c 'SHOW POOL_NODES' >&2

# --- the rounds ------------------------------------------------------------------
through_url="postgres://postgres:$PGPASSWORD@127.0.0.1:$pgpool_port/postgres"
load=(--duration "$secs" --concurrency "$concurrency" --read-ratio "$read_ratio")

# (a) through the library, straight to the nodes: both pools of exactly
# --concurrency connections, all open before the clock starts (as --local
# makes them).
run_a() {
  DATABASE_URL=$DATABASE_URL DATABASE_REPLICA_URLS=$DATABASE_REPLICA_URLS \
    DATABASE_WRITER_POOL_SIZE=$concurrency DATABASE_REPLICA_POOL_SIZE=$concurrency \
    DATABASE_WARM_UP=$concurrency \
    "$loadgen" "${load[@]}" "$@"
}
# (b) given only pgpool's endpoint.
run_b() {
  "$loadgen" --through "$through_url" "${load[@]}" "$@"
}

# Where the CPU goes, per run: the client (loadgen), the nodes (each
# postmaster and its processes) and pgpool (its processes), in ms. Each
# run's set-up (logins, the wait for the replicas) is in it too.
hz=$(getconf CLK_TCK)
node_pids=()
for node in "$LOADGEN_PRIMARY" "${replicas[@]}"; do
  pid=$(ss -ltnpH "sport = :${node##*:}" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
  [ -n "$pid" ] || die "no server found listening on $node"
  node_pids+=("$pid")
done
# CPU ms of the processes $@ and their children: /proc/PID/stat utime +
# stime of each and of its live children, and cutime + cstime (children it
# has reaped, such as the backends of closed connections).
cpu_ms() {
  local pid child stat ticks=0 f
  for pid in "$@"; do
    for child in "$pid" $(pgrep -P "$pid"); do
      stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
      # The fields after the command name, which is in parentheses.
      read -r -a f <<<"${stat##*) }"
      ticks=$((ticks + f[11] + f[12]))
      if [ "$child" = "$pid" ]; then ticks=$((ticks + f[13] + f[14])); fi
    done
  done
  echo $((ticks * 1000 / hz))
}
# CPU ms of this shell's finished children (loadgen, and the odd helper)
# from the output of bash's `times` in file $1 (its second line, user and
# system). `times` must run in this shell, not in a $(...) subshell, whose
# children are its own.
children_ms() {
  tail -n 1 "$1" | awk '{
    ms = 0
    for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); ms += (t[1] * 60 + t[2]) * 1000 }
    printf "%d\n", ms
  }'
}

# One run of side $1 (a or b) as round $2, its JSON kept and printed, its
# CPU (client, nodes, pgpool, ms) in $tmp/SIDE.ROUND.cpu.
run_side() {
  local side=$1 round=$2 out=$tmp/$1.$2.json nodes pool
  times >"$tmp/times.before"
  nodes=$(cpu_ms "${node_pids[@]}")
  pool=$(cpu_ms "$pgpool_pid")
  if ! "run_$side" >"$out" 2>"$tmp/$side.$round.log"; then
    cat "$tmp/$side.$round.log" >&2
    die "round $round, side ($side) failed"
  fi
  # The backends of (a)'s closed connections end (and are reaped) now.
  sleep 0.5
  times >"$tmp/times.after"
  echo "$(($(children_ms "$tmp/times.after") - $(children_ms "$tmp/times.before"))) \
$(($(cpu_ms "${node_pids[@]}") - nodes)) $(($(cpu_ms "$pgpool_pid") - pool))" >"$tmp/$side.$round.cpu"
  grep -E '^loadgen: (through|writer|done)' "$tmp/$side.$round.log" | sed "s/^/  ($side) /" >&2 || true
  printf '(%s) round %s: %s\n' "$side" "$round" "$(cat "$out")"
}

say "warm-up, not counted: one 2 s run of each (the first prepares the table)"
load=(--duration 2 --concurrency "$concurrency" --read-ratio "$read_ratio")
run_side a 0 >/dev/null
run_side b 0 >/dev/null
load=(--duration "$secs" --concurrency "$concurrency" --read-ratio "$read_ratio")

# Where pgpool sent what, from here on: its counters before the rounds.
pool_nodes() { pgpool_psql -At -F '|' -c 'SHOW POOL_NODES'; }
pool_nodes >"$tmp/nodes.before"

say "$rounds rounds of $secs s, concurrency $concurrency, read ratio $read_ratio, (a) and (b) in alternating order"
for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(a b); else order=(b a); fi
  for side in "${order[@]}"; do run_side "$side" "$r"; done
done
pool_nodes >"$tmp/nodes.after"

# --- where pgpool sent the reads ---------------------------------------------------
# SHOW POOL_NODES: node_id hostname port status pg_status lb_weight role
# pg_role select_cnt ...: select_cnt counts the SELECTs pgpool balanced to
# each node (from (b) only: (a) does not go through pgpool).
echo
echo "library: diesel-replica at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
echo "pgpool: $pgpool_version"
echo "SHOW POOL_NODES over the measured rounds (select_cnt: SELECTs pgpool sent to the node):"
awk -F '|' 'FNR == NR { before[$1] = $9; next }
  { printf "  node %s %s:%s, role %s, weight %s: select_cnt +%d\n", $1, $2, $3, $7, $6, $9 - before[$1] }' \
  "$tmp/nodes.before" "$tmp/nodes.after"

# --- summary ---------------------------------------------------------------------
# A number field of one JSON line (keys are unique at the top level; the
# nested per_node keys are reads, writes, retries, ejections).
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2"; }

echo
echo "| round | side | reads/s | writes/s | ops/s | read p50 µs | read p99 µs | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for ((r = 1; r <= rounds; r++)); do
  for side in a b; do
    f=$tmp/$side.$r.json
    reads=$(field reads_per_s "$f")
    writes=$(field writes_per_s "$f")
    errs=$(($(field reads_err "$f") + $(field writes_err "$f")))
    printf '| %s | %s | %s | %s | %.1f | %s | %s | %s |\n' "$r" "$side" "$reads" "$writes" \
      "$(awk -v a="$reads" -v b="$writes" 'BEGIN { print a + b }')" \
      "$(field read_p50_us "$f")" "$(field read_p99_us "$f")" "$errs"
  done
done

# Per side: operations over time (all rounds), and the mean of the rounds'
# p50 and p99 (histograms are not merged across processes).
for side in a b; do
  for ((r = 1; r <= rounds; r++)); do
    f=$tmp/$side.$r.json
    echo "$(field reads_ok "$f") $(field writes_ok "$f") $(field duration_s "$f") $(field read_p50_us "$f") $(field read_p99_us "$f") $(cat "$tmp/$side.$r.cpu")"
  done >"$tmp/$side.rows"
done
awk '
  FNR == 1 { side++ }
  { ops[side] += $1 + $2; secs[side] += $3; p50[side] += $4; p99[side] += $5; n[side]++
    rate[side, n[side]] = ($1 + $2) / $3
    client[side] += $6; nodes[side] += $7; pool[side] += $8 }
  END {
    for (s = 1; s <= 2; s++) { t[s] = ops[s] / secs[s]; m50[s] = p50[s] / n[s]; m99[s] = p99[s] / n[s] }
    printf "\n(a) library direct:  %.1f ops/s, read p50 %.0f µs, p99 %.0f µs (mean of %d rounds)\n", t[1], m50[1], m99[1], n[1]
    printf "(b) through pgpool:  %.1f ops/s, read p50 %.0f µs, p99 %.0f µs\n", t[2], m50[2], m99[2]
    printf "throughput (a)/(b): %.3f  per round:", t[1] / t[2]
    for (r = 1; r <= n[1]; r++) printf " %.3f", rate[1, r] / rate[2, r]
    printf "\nread p50 (a)/(b):   %.3f\nread p99 (a)/(b):   %.3f\n", m50[1] / m50[2], m99[1] / m99[2]
    printf "\nCPU per operation, µs (set-up included): client, nodes, pgpool = total; cores busy over the load\n"
    for (s = 1; s <= 2; s++) {
      c = client[s] * 1000 / ops[s]; d = nodes[s] * 1000 / ops[s]; p = pool[s] * 1000 / ops[s]
      printf "(%s) %6.1f + %6.1f + %6.1f = %6.1f; %.2f + %.2f + %.2f cores\n", s == 1 ? "a" : "b", c, d, p, c + d + p,
        client[s] / 1000 / secs[s], nodes[s] / 1000 / secs[s], pool[s] / 1000 / secs[s]
    }
  }' "$tmp/a.rows" "$tmp/b.rows"
