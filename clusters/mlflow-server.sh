#!/usr/bin/env bash
# An MLflow tracking server for cluster sweeps, secure by default:
#   - runs and model versions in PostgreSQL (a cluster this script creates in DATA/pg on first start and
#     runs on 127.0.0.1 only), the users of the basic-auth app in a second database of the same cluster;
#   - artefacts proxied by the server (--serve-artifacts) into DATA/artifacts, so clients need no access
#     to the storage behind it;
#   - HTTP basic authentication on (MLflow's `basic-auth` app): clients set MLFLOW_TRACKING_USERNAME and
#     MLFLOW_TRACKING_PASSWORD;
#   - bound to 127.0.0.1 unless --host says otherwise.
# It stays in the foreground; Ctrl-C or SIGTERM stops the server and then PostgreSQL.
# See clusters/README.md ("MLflow tracking server") for the whole recipe.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: clusters/mlflow-server.sh --data DIR [options]

  --data DIR           everything the server keeps: pg/ (PostgreSQL cluster), artifacts/, secrets/, logs
  --host ADDR          interface the MLflow server binds to (default 127.0.0.1; 0.0.0.0 exposes it to the
                       network: put a TLS proxy in front and set --allowed-hosts)
  --port N             MLflow server port (default 5000)
  --pg-port N          PostgreSQL port on 127.0.0.1 (default 5433, beside a system cluster on 5432)
  --socket-dir DIR     PostgreSQL's unix socket folder (default DATA/pgsock, or a short folder in /tmp
                       when that path is too long for a unix socket)
  --pg-user USER       the unprivileged user PostgreSQL runs as when started by root (default postgres;
                       created as a system user if missing); ignored for other users
  --workers N          MLflow server worker processes (default 2)
  --auth-cache-ttl S   seconds a worker trusts a verified user name and password before hashing the
                       password again (MLflow's auth_cache_ttl_seconds; default 60, 0 checks every
                       request). A password change or a deleted user reaches the other workers after
                       at most S seconds; the hash check costs tens of milliseconds on every request
                       without it, several times per request
  --allowed-hosts L    passed to `mlflow server --allowed-hosts` (Host headers accepted)
  --python PY          the Python that has mlflow and psycopg2 (default: python3 on PATH)

environment:
  MLFLOW_AUTH_ADMIN_USERNAME      the admin user (default admin)
  MLFLOW_AUTH_ADMIN_PASSWORD      the admin's password on first start; without it one is generated into
                                  DATA/secrets/admin_password (mode 600). Never printed.
  MLFLOW_FLASK_SERVER_SECRET_KEY  the CSRF key of the auth app; default: generated once into DATA/secrets/
EOF
}

log() { echo "mlflow-server: $*" >&2; }
die() { log "error: $*"; exit 2; }

DATA="" HOST=127.0.0.1 PORT=5000 PG_PORT=5433 SOCK="" PG_USER=postgres WORKERS=2 ALLOWED="" PY=python3 AUTH_TTL=60
while [[ $# -gt 0 ]]; do
    [[ "$1" == -h || "$1" == --help || $# -ge 2 ]] || die "$1 needs a value"
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --pg-port) PG_PORT="$2"; shift 2 ;;
        --socket-dir) SOCK="$2"; shift 2 ;;
        --pg-user) PG_USER="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --auth-cache-ttl) AUTH_TTL="$2"; shift 2 ;;
        --allowed-hosts) ALLOWED="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "$DATA" ]] || { usage >&2; die "--data DIR is required"; }
for n in "$PORT" "$PG_PORT" "$WORKERS" "$AUTH_TTL"; do [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n"; done

# Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin (an initdb on PATH
# may be a lone link to one of them: its real folder holds the rest)
PG_BIN="${PG_BIN:-}"
if [[ -z "$PG_BIN" ]]; then
    if command -v initdb >/dev/null; then
        PG_BIN="$(dirname "$(readlink -f "$(command -v initdb)")")"
    else
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    fi
fi
for b in initdb postgres psql pg_isready; do
    [[ -x "$PG_BIN/$b" ]] || die "PostgreSQL's $b not found (PG_BIN=${PG_BIN:-unset}); apt-get install postgresql"
done
# looked up, not imported: importing mlflow takes seconds, and the server imports it soon enough
"$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' \
    mlflow flask_wtf psycopg2 \
    || die "$PY lacks mlflow, its auth extra or psycopg2 (the PostgreSQL driver): pip install 'mlflow[auth]' psycopg2-binary"

umask 077
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
# PostgreSQL's user must be able to pass through DATA to its own DATA/pg; everything else stays private
chmod 0711 "$DATA"
mkdir -p "$DATA/secrets" "$DATA/artifacts"

# ---------------------------------------------------------------- who runs PostgreSQL
# postgres refuses to run as root: as root, drop to an unprivileged user; otherwise run as ourselves
if [[ $EUID -eq 0 ]]; then
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
        log "creating system user $PG_USER to run PostgreSQL"
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_USER"
    fi
    # a clean environment: PostgreSQL never sees the admin password or the Flask key
    AS_PG=(env -i PATH="$PG_BIN:/usr/bin:/bin" LC_ALL=C setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --)
else
    PG_USER="$(id -un)"
    AS_PG=(env -i PATH="$PG_BIN:/usr/bin:/bin" LC_ALL=C HOME="${HOME:-/}")
fi
# a command prefix rather than a function: `"${AS_PG[@]}" postgres &` execs down to postgres itself, so $! is
# its pid (a backgrounded function would be a subshell that ignores SIGINT)
as_pg() { "${AS_PG[@]}" "$@"; }
as_pg test -x "$DATA" \
    || die "user $PG_USER cannot reach $DATA: make its parent folders traversable (chmod o+x) or pick another --data"

# ---------------------------------------------------------------- secrets (files of mode 600, never printed)
secret() {  # secret NAME: the file's content, generated on first use
    local f="$DATA/secrets/$1"
    [[ -s "$f" ]] || { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; echo; } > "$f"  # 192 random bits, in hex
    cat "$f"
}
DB_PASSWORD="$(secret db_password)"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:=$(secret flask_secret_key)}"
: "${MLFLOW_AUTH_ADMIN_USERNAME:=admin}"
# libpq reads the database password from here, so it never appears in a URI, a command line or a log
printf '127.0.0.1:%s:*:mlflow:%s\n' "$PG_PORT" "$DB_PASSWORD" > "$DATA/secrets/pgpass"
chmod 0700 "$DATA/secrets"
chmod 0600 "$DATA/secrets/pgpass"  # libpq ignores a password file that others can read

# ---------------------------------------------------------------- PostgreSQL
PGDATA="$DATA/pg"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    log "creating the PostgreSQL cluster in $PGDATA"
    rm -rf "$PGDATA"
    mkdir -m 0700 "$PGDATA"
    chown "$PG_USER:" "$PGDATA"
    # local (socket) logins only for PostgreSQL's own user (peer); TCP logins need a SCRAM password
    as_pg initdb -D "$PGDATA" -U "$PG_USER" -E UTF8 --locale=C --auth-local=peer --auth-host=scram-sha-256 \
        > "$DATA/initdb.log" 2>&1 || { tail -n 20 "$DATA/initdb.log" >&2; die "initdb failed"; }
fi

MADE_SOCK=""
[[ -n "$SOCK" ]] || SOCK="$DATA/pgsock"
if (( ${#SOCK} + 20 > 100 )); then  # unix socket paths are limited to about 100 bytes
    SOCK="$(mktemp -d /tmp/pgsock.XXXXXX)"
    MADE_SOCK="$SOCK"
fi
mkdir -p "$SOCK"
chown "$PG_USER:" "$SOCK"
chmod 0700 "$SOCK"

MLFLOW_PID="" PG_PID=""
stop() {  # stop what this script started, newest first, each by its pid
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$MLFLOW_PID" ]] && kill -0 "$MLFLOW_PID" 2>/dev/null; then
        kill -TERM "$MLFLOW_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$MLFLOW_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$MLFLOW_PID" 2>/dev/null || true
        wait "$MLFLOW_PID" 2>/dev/null || true
    fi
    if [[ -n "$PG_PID" ]] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -INT "$PG_PID" 2>/dev/null || true  # SIGINT: PostgreSQL's fast shutdown (clean, no waiting for clients)
        for _ in $(seq 150); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.2; done
        kill -QUIT "$PG_PID" 2>/dev/null || true
        wait "$PG_PID" 2>/dev/null || true
    fi
    [[ -z "$MADE_SOCK" ]] || rm -rf "$MADE_SOCK"
    log "stopped"
    exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# started directly (not through pg_ctl, which detaches it) so that it stays this script's child
"${AS_PG[@]}" postgres -D "$PGDATA" -p "$PG_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$SOCK" \
    >> "$DATA/postgres.log" 2>&1 &
PG_PID=$!
for _ in $(seq 300); do
    kill -0 "$PG_PID" 2>/dev/null || { tail -n 20 "$DATA/postgres.log" >&2; die "PostgreSQL exited while starting"; }
    as_pg pg_isready -q -h "$SOCK" -p "$PG_PORT" && break
    sleep 0.2
done
as_pg pg_isready -q -h "$SOCK" -p "$PG_PORT" || die "PostgreSQL not ready after 60 s (see $DATA/postgres.log)"

# The role gets a SCRAM verifier computed here, so the password itself never reaches the server (nor its
# log, should a statement fail); databases are created once and kept.
VERIFIER="$("$PY" -c '
import base64, hashlib, hmac, os, sys
pw, salt, n = sys.stdin.read().strip().encode(), os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, n)
client, server = (hmac.new(salted, k, "sha256").digest() for k in (b"Client Key", b"Server Key"))
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${n}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
' <<< "$DB_PASSWORD")"
as_pg psql -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -d postgres > /dev/null <<SQL
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow')\gexec
ALTER ROLE mlflow PASSWORD '$VERIFIER';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth')\gexec
SQL

# ---------------------------------------------------------------- MLflow
# MLflow reads the admin's password only to create the admin, on the first start against an empty user
# store. Without MLFLOW_AUTH_ADMIN_PASSWORD, a generated one is kept in DATA/secrets/admin_password; it is
# generated only while no admin exists, so the file never holds a password the server does not accept.
admin_exists="$(as_pg psql -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -d mlflow_auth \
    -v u="$MLFLOW_AUTH_ADMIN_USERNAME" <<'SQL'
SELECT 'SELECT count(*) FROM users WHERE username = ' || quote_literal(:'u')
    WHERE to_regclass('public.users') IS NOT NULL\gexec
SQL
)" || die "cannot read the user store (database mlflow_auth)"
if [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
    ADMIN_PASSWORD_FROM="password from MLFLOW_AUTH_ADMIN_PASSWORD"
elif [[ -s "$DATA/secrets/admin_password" || "${admin_exists:-0}" == 0 ]]; then
    MLFLOW_AUTH_ADMIN_PASSWORD="$(secret admin_password)"
    ADMIN_PASSWORD_FROM="password in $DATA/secrets/admin_password"
else
    ADMIN_PASSWORD_FROM="password as set when the admin was created"
fi
# The auth app's users live in their own database; READ lets every signed-in user see every experiment
# (a user gets MANAGE on what they create); the admin's password comes from the environment only.
cat > "$DATA/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = $AUTH_TTL
INI

extra=()
[[ -z "$ALLOWED" ]] || extra+=(--allowed-hosts "$ALLOWED")
case "$HOST" in
    127.*|localhost|::1) ;;
    *) log "warning: serving on $HOST, beyond this machine: plain HTTP carries the passwords, so put a TLS" \
           "proxy in front" ;;
esac

export PGPASSFILE="$DATA/secrets/pgpass" MLFLOW_AUTH_CONFIG_PATH="$DATA/basic_auth.ini"
export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_FLASK_SERVER_SECRET_KEY
[[ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]] || export MLFLOW_AUTH_ADMIN_PASSWORD
# GenAI job execution (a background job runner) is of no use to sweeps and costs a process and start-up time
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
"$PY" -m mlflow server --app-name basic-auth --host "$HOST" --port "$PORT" --workers "$WORKERS" \
    --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
    --serve-artifacts --artifacts-destination "$DATA/artifacts" "${extra[@]}" &
MLFLOW_PID=$!

probe="$HOST"
[[ "$HOST" != 0.0.0.0 ]] || probe=127.0.0.1
[[ "$HOST" != "::" ]] || probe="::1"
[[ "$probe" != *:* ]] || probe="[$probe]"
URL="http://$probe:$PORT"
ready=""
deadline=$((SECONDS + 180))
while (( SECONDS < deadline )); do
    kill -0 "$MLFLOW_PID" 2>/dev/null || die "the MLflow server exited while starting"
    if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' "$URL" \
        2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.3
done
[[ -n "$ready" ]] || die "the MLflow server did not answer on $URL/health within 180 s"
log "ready: $URL (user $MLFLOW_AUTH_ADMIN_USERNAME, $ADMIN_PASSWORD_FROM; database" \
    "postgresql://mlflow@127.0.0.1:$PG_PORT/mlflow; artefacts $DATA/artifacts)"
wait "$MLFLOW_PID"
