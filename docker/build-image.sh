#!/usr/bin/env bash
# Builds a local image with PostgreSQL from Debian's packages, for an
# engine that cannot pull one (no registry): a minimal root filesystem made
# by mmdebstrap, then `docker import`. It holds initdb, pg_ctl, postgres,
# pg_basebackup, psql and pg_isready on PATH, and a `postgres` user whose
# home is /var/lib/postgresql.
#
# --version picks the PostgreSQL major version, from the Debian release
# that ships it: 13 (bullseye), 15 (bookworm, the default) or 17 (trixie).
#
# With --pgbouncer it builds PgBouncer from Debian trixie's packages
# instead (1.24, newer than bookworm's 1.18), for the testkit's pooler
# (DIESEL_REPLICA_TEST_PGBOUNCER_IMAGE).
#
#   docker/build-image.sh [--version 13|15|17] [--pgbouncer] [--rebuild]
#
# Prints the image's tag as the last line of stdout; progress goes to
# stderr. A tag that already exists, built by this version of the script,
# is printed without building again, unless --rebuild is given.
set -euo pipefail

version=15
rebuild=false
pgbouncer=false
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) rebuild=true ;;
    --pgbouncer) pgbouncer=true ;;
    --version)
      [ $# -ge 2 ] || { echo "--version needs 13, 15 or 17" >&2; exit 2; }
      version=$2
      shift
      ;;
    *) echo "usage: $0 [--version 13|15|17] [--pgbouncer] [--rebuild]" >&2; exit 2 ;;
  esac
  shift
done
case "$version" in
  13) suite=bullseye ;;
  15) suite=bookworm ;;
  17) suite=trixie ;;
  *) echo "PostgreSQL $version is not built here: --version takes 13, 15 or 17" >&2; exit 2 ;;
esac
tag=diesel-replica/postgres:$version-$suite
if [ "$pgbouncer" = true ]; then
  suite=trixie
  tag=diesel-replica/pgbouncer:trixie
fi

# The image is labelled with this script's hash: one built by another
# version of the script is built again.
script=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
old=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
built_by=$(docker image inspect --format '{{index .Config.Labels "diesel-replica.build-script"}}' "$tag" 2>/dev/null || true)
if [ -n "$old" ] && [ "$rebuild" = false ]; then
  if [ "$built_by" = "$script" ]; then
    echo "$tag exists ($old); --rebuild builds it again" >&2
    echo "$tag"
    exit 0
  fi
  echo "$tag was built by another version of this script: building it again" >&2
fi

if ! command -v mmdebstrap >/dev/null; then
  echo "== installing mmdebstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends mmdebstrap >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

started=$SECONDS
if [ "$pgbouncer" = true ]; then
  echo "== building $tag with mmdebstrap (trixie, pgbouncer)" >&2
  mmdebstrap \
    --variant=essential \
    --include=pgbouncer \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$suite" "$work/rootfs.tar" </dev/null >&2
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["pgbouncer", "--version"]' \
    --change "LABEL diesel-replica.build-script=$script" \
    "$work/rootfs.tar" "$tag" >&2
else
  echo "== building $tag with mmdebstrap ($suite, postgresql-$version)" >&2
  # The essential hook runs before postgresql-15 is configured: with
  # create_main_cluster = false its postinst creates no cluster, so the
  # image holds no data directory of its own. Documentation, man pages and
  # translations are left out; package lists are removed by mmdebstrap's
  # cleanup. The customize hooks make the data directory the compose
  # scripts use and the socket directory PostgreSQL's defaults use, which
  # the cleanup would remove with the rest of /run (adduser's lock goes).
  # shellcheck disable=SC2016 # "$1" is the hooks' own: the root directory.
  mmdebstrap \
    --variant=essential \
    --include=postgresql-$version \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook='mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.conf"' \
    --customize-hook='chroot "$1" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data' \
    --customize-hook='chroot "$1" install -d -o postgres -g postgres -m 2775 /run/postgresql' \
    --customize-hook='rm -f "$1/run/adduser"' \
    --skip=cleanup/run \
    "$suite" "$work/rootfs.tar" </dev/null >&2

  # The binaries on PATH, PGDATA as in the official image, and the postgres
  # user by default. (This engine's import takes no STOPSIGNAL:
  # docker-compose.yml sets SIGINT, a fast shutdown.)
  docker import \
    --change "ENV PATH=/usr/lib/postgresql/$version/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'USER postgres' \
    --change 'WORKDIR /var/lib/postgresql' \
    --change 'CMD ["bash"]' \
    --change "LABEL diesel-replica.build-script=$script" \
    "$work/rootfs.tar" "$tag" >&2
fi

# A rebuild leaves the previous image untagged: remove it unless a
# container still uses it.
new=$(docker image inspect --format '{{.Id}}' "$tag")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  docker image rm "$old" >/dev/null 2>&1 || true
fi
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "== built $tag in $((SECONDS - started)) s, $((size / 1000000)) MB" >&2
echo "$tag"
