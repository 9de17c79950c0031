#!/usr/bin/env bash
# Compares sysbench straight at MariaDB with sysbench through Tessera.
#
# Starts `tessera playground` (one MariaDB + the proxy), prepares the sysbench
# table on the backend, then for every test x ps-mode x round runs sysbench
# directly against the backend and through the proxy, alternating which goes
# first, and prints QPS, p95 latency, errors, and the CPU time per query of
# the proxy, of MariaDB and of sysbench (straight and through the proxy).
#
# Settings (environment variables, or the matching --flags):
#   THREADS=8  TIME=20 (seconds per run)  ROUNDS=2  TABLE_SIZE=10000
#   TESTS="oltp_point_select oltp_read_only"  MODES="disable auto" (--db-ps-mode)
#   PROXY_PORT=0 (0: the playground picks a free port)
#   TESSERA_BIN=<path> and SKIP_BUILD=1 to use an existing binary.
#   SHARDS=1 (>1: sbtest1 is declared sharded by id over SHARDS nodes, 4
#            sub-tables each; "direct" is sysbench at shard 1's primary on the
#            plain table, "tessera" goes through the sharded proxy)
#   SYSBENCH_ARGS="" (more options for every `sysbench run`, e.g.
#            "--skip_trx=on": a Tessera transaction stays on one node)
#
# Exits non-zero if any sysbench run failed or reported errors.
set -euo pipefail

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Flags: --threads N --time S --rounds N --table-size N --tests "A B" --modes "A B"
       --port P --bin PATH --shards N --skip-build -h|--help
EOF
}

THREADS=${THREADS:-8}
TIME=${TIME:-20}
ROUNDS=${ROUNDS:-2}
TABLE_SIZE=${TABLE_SIZE:-10000}
TESTS=${TESTS:-"oltp_point_select oltp_read_only"}
MODES=${MODES:-"disable auto"}
PROXY_PORT=${PROXY_PORT:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
SHARDS=${SHARDS:-1}
SYSBENCH_ARGS=${SYSBENCH_ARGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-120}

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
TESSERA_BIN=${TESSERA_BIN:-"$repo_root/target/release/tessera"}

die() {
    echo "sysbench.sh: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    arg=$1
    value=""
    case $arg in
        --*=*)
            value=${arg#*=}
            arg=${arg%%=*}
            ;;
        --threads | --time | --rounds | --table-size | --tests | --modes | --port | --bin | --shards)
            [[ $# -ge 2 ]] || die "$arg needs a value"
            value=$2
            shift
            ;;
    esac
    case $arg in
        --threads) THREADS=$value ;;
        --time) TIME=$value ;;
        --rounds) ROUNDS=$value ;;
        --table-size) TABLE_SIZE=$value ;;
        --tests) TESTS=$value ;;
        --modes) MODES=$value ;;
        --port) PROXY_PORT=$value ;;
        --bin) TESSERA_BIN=$value ;;
        --shards) SHARDS=$value ;;
        --skip-build) SKIP_BUILD=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
    shift
done

for n in THREADS TIME ROUNDS TABLE_SIZE PROXY_PORT SHARDS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer, got '${!n}'"
done
((ROUNDS >= 1 && THREADS >= 1 && TIME >= 1)) || die "THREADS, TIME and ROUNDS must be at least 1"
read -r -a tests <<<"$TESTS"
read -r -a modes <<<"$MODES"
read -r -a extra_args <<<"$SYSBENCH_ARGS"
((${#tests[@]} > 0)) || die "TESTS is empty"
((${#modes[@]} > 0)) || die "MODES is empty"

log() {
    echo "==> $*" >&2
}

# ------------------------------------------------------------------ sysbench

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

if ! command -v sysbench >/dev/null 2>&1; then
    log "installing sysbench"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y sysbench
fi

# ------------------------------------------------------------------- tessera

if [[ $SKIP_BUILD != 1 ]]; then
    log "building tessera (release)"
    (cd "$repo_root" && cargo build --release -p tessera-net)
fi
[[ -x $TESSERA_BIN ]] || die "no tessera binary at $TESSERA_BIN"

work=$(mktemp -d "${TMPDIR:-/tmp}/tessera-sysbench.XXXXXX")
playground_pid=""

cleanup() {
    local rc=$?
    if [[ -n ${sharded_pid:-} ]]; then
        kill -TERM "$sharded_pid" 2>/dev/null || true
        wait "$sharded_pid" 2>/dev/null || true
    fi
    if [[ -n $playground_pid ]] && kill -0 "$playground_pid" 2>/dev/null; then
        log "stopping the playground (pid $playground_pid)"
        kill -TERM "$playground_pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 300; i++)); do
            kill -0 "$playground_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$playground_pid" 2>/dev/null; then
            log "playground did not stop in 30 s; killing it"
            kill -KILL "$playground_pid" 2>/dev/null || true
        fi
        wait "$playground_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting tessera playground in $work"
"$TESSERA_BIN" playground --shards "$((SHARDS > 1 ? SHARDS : 1))" --replicas 0 --port "$PROXY_PORT" --dir "$work/playground" \
    >"$work/playground.out" 2>"$work/playground.err" &
playground_pid=$!

deadline=$((SECONDS + READY_TIMEOUT))
until grep -q 'ready:' "$work/playground.out" 2>/dev/null; do
    if ! kill -0 "$playground_pid" 2>/dev/null; then
        wait "$playground_pid" || true
        playground_pid=""
        echo "--- playground stdout" >&2
        cat "$work/playground.out" >&2 || true
        echo "--- playground stderr (tail)" >&2
        tail -n 40 "$work/playground.err" >&2 || true
        die "the playground exited before it was ready"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 40 "$work/playground.err" >&2 || true
        die "the playground was not ready after ${READY_TIMEOUT} s"
    fi
    sleep 0.2
done

url=$(grep -m1 -o 'ready:[[:space:]]*mysql://[^[:space:]]*' "$work/playground.out" | sed 's/^ready:[[:space:]]*//')
# mysql://USER:PASS@HOST:PORT/DB
if [[ ! $url =~ ^mysql://([^:@/]+):([^@]*)@([^:/]+):([0-9]+)/([^/?[:space:]]+)$ ]]; then
    die "cannot parse the playground URL '$url'"
fi
db_user=${BASH_REMATCH[1]}
db_password=${BASH_REMATCH[2]}
proxy_host=${BASH_REMATCH[3]}
proxy_port=${BASH_REMATCH[4]}
db_name=${BASH_REMATCH[5]}

backend_line=$(grep -m1 -E 'backend:.*primary' "$work/playground.out" || grep -m1 'backend:' "$work/playground.out" || true)
backend_port=$(grep -o -E '127\.0\.0\.1:[0-9]+' <<<"$backend_line" | head -n1 | cut -d: -f2 || true)
[[ -n $backend_port ]] || die "no backend address in the playground output: $(cat "$work/playground.out")"

# The process that runs the proxy: a `tessera run` child of the playground if
# there is one, else the playground itself (proxy in-process).
proxy_pid=$(pgrep -P "$playground_pid" -f 'tessera run' | head -n1 || true)
proxy_pid=${proxy_pid:-$playground_pid}

log "proxy $proxy_host:$proxy_port (pid $proxy_pid), backend 127.0.0.1:$backend_port, db $db_name, user $db_user"

# Every mariadbd of the playground: their CPU time per query shows what a
# statement costs the backend, straight and through the proxy.
backend_pids=()
for pidfile in "$work"/playground/*/mysqld.pid; do
    [[ -f $pidfile ]] && backend_pids+=("$(<"$pidfile")")
done

clk_tck=$(getconf CLK_TCK)

# utime + stime of a process, in clock ticks.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    # Fields after the parenthesised command name: state is field 3, so
    # utime (14) and stime (15) are the 12th and 13th fields here.
    stat=${stat##*) }
    local -a f
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

backend_ticks() {
    local sum=0 pid
    for pid in "${backend_pids[@]}"; do
        sum=$((sum + $(cpu_ticks "$pid")))
    done
    echo "$sum"
}

# "idle total" clock ticks of the whole machine, from /proc/stat.
machine_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t; exit }' /proc/stat
}

# µs of CPU per query from clock ticks.
per_query() {
    awk -v t="$1" -v hz="$clk_tck" -v q="$2" 'BEGIN { if (q > 0) printf "%.1f", t * 1e6 / hz / q; else print "NA" }'
}

# sysbench's own user + system time, from bash's `time`.
TIMEFORMAT='%U %S'

common_args=(
    --db-driver=mysql
    --mysql-user="$db_user"
    --mysql-password="$db_password"
    --mysql-db="$db_name"
    --tables=1
    --table-size="$TABLE_SIZE"
)

log "preparing sbtest1 ($TABLE_SIZE rows) on the backend"
sysbench oltp_read_only "${common_args[@]}" --mysql-host=127.0.0.1 --mysql-port="$backend_port" \
    prepare >"$work/prepare.log" 2>&1 || {
    cat "$work/prepare.log" >&2
    die "sysbench prepare failed"
}

if ((SHARDS > 1)); then
    # Every shard gets the same rows and keeps those of its own sub-tables
    # (hash on id: sub-table = id mod total) in sbtest1_0000…; a second
    # proxy, declaring sbtest1 sharded, is the one measured.
    per_node=4
    total=$((SHARDS * per_node))
    mapfile -t primary_ports < <(grep -E 'backend:.*primary' "$work/playground.out" | grep -o -E '127\.0\.0\.1:[0-9]+' | cut -d: -f2)
    ((${#primary_ports[@]} == SHARDS)) || die "expected $SHARDS primaries in the playground output"
    for ((node = 0; node < SHARDS; node++)); do
        port=${primary_ports[$node]}
        if ((node > 0)); then
            sysbench oltp_read_only "${common_args[@]}" --mysql-host=127.0.0.1 --mysql-port="$port" \
                prepare >>"$work/prepare.log" 2>&1 || die "sysbench prepare on shard $((node + 1)) failed"
        fi
        sqls=""
        for ((k = 0; k < per_node; k++)); do
            idx=$((node * per_node + k))
            sub=$(printf 'sbtest1_%04d' "$idx")
            sqls+="CREATE TABLE $sub LIKE sbtest1; INSERT INTO $sub SELECT * FROM sbtest1 WHERE id % $total = $idx; "
        done
        mariadb -h127.0.0.1 -P"$port" -u"$db_user" -p"$db_password" "$db_name" -e "$sqls" ||
            die "creating sub-tables on shard $((node + 1)) failed"
    done
    locations=$(for ((node = 0; node < SHARDS; node++)); do printf '%s, ' "$per_node"; done)
    sed -e 's/^listen = .*/listen = "127.0.0.1:0"/' "$work/playground/tessera.toml" >"$work/sharded.toml"
    printf '\n[[schema.tables]]\nname = "sbtest1"\nkey = "id"\nfunction = "hash"\nlocations = [%s]\n' \
        "${locations%, }" >>"$work/sharded.toml"
    TESSERA_LOG=info "$TESSERA_BIN" run --config "$work/sharded.toml" >"$work/sharded.out" 2>"$work/sharded.err" &
    sharded_pid=$!
    deadline=$((SECONDS + READY_TIMEOUT))
    until grep -q 'tessera listening' "$work/sharded.err" 2>/dev/null; do
        kill -0 "$sharded_pid" 2>/dev/null || {
            cat "$work/sharded.err" >&2
            die "the sharded proxy exited"
        }
        ((SECONDS < deadline)) || die "the sharded proxy did not start"
        sleep 0.2
    done
    proxy_port=$(grep -m1 'tessera listening' "$work/sharded.err" | grep -o -E '127\.0\.0\.1:[0-9]+' | cut -d: -f2)
    proxy_pid=$sharded_pid
    log "sharded proxy on port $proxy_port (pid $proxy_pid): sbtest1 over $total sub-tables on $SHARDS nodes"
fi

# Runs one sysbench; sets run_qps, run_queries, run_p95, run_errors, run_ok,
# run_backend_us / run_client_us (CPU µs per query of MariaDB, sysbench) and
# run_idle (% of the machine's CPU time left idle).
run_sysbench() {
    local test=$1 mode=$2 port=$3 logfile=$4
    local backend_before client_cpu idle_before total_before idle_after total_after
    run_ok=1
    backend_before=$(backend_ticks)
    read -r idle_before total_before < <(machine_ticks)
    if ! { time sysbench "$test" "${common_args[@]}" --mysql-host=127.0.0.1 --mysql-port="$port" \
        --threads="$THREADS" --time="$TIME" --report-interval=0 --db-ps-mode="$mode" \
        --mysql-ignore-errors=none "${extra_args[@]}" run >"$logfile" 2>&1; } 2>"$logfile.time"; then
        run_ok=0
    fi
    run_backend_ticks=$(($(backend_ticks) - backend_before))
    read -r idle_after total_after < <(machine_ticks)
    run_idle=$(awk -v i=$((idle_after - idle_before)) -v t=$((total_after - total_before)) \
        'BEGIN { if (t > 0) printf "%.0f", 100 * i / t; else print "NA" }')
    client_cpu=$(awk '{ print $1 + $2; exit }' "$logfile.time" 2>/dev/null || true)
    run_qps=$(awk '/^[[:space:]]*queries:/ { gsub(/[()]/, "", $3); print $3; exit }' "$logfile")
    run_queries=$(awk '/^[[:space:]]*queries:/ { print $2; exit }' "$logfile")
    run_p95=$(awk '/95th percentile:/ { print $3; exit }' "$logfile")
    run_errors=$(awk '/^[[:space:]]*(ignored )?errors:/ { print $(NF - 3); exit }' "$logfile")
    run_qps=${run_qps:-0}
    run_queries=${run_queries:-0}
    run_p95=${run_p95:-NA}
    run_errors=${run_errors:-0}
    run_backend_us=$(per_query "$run_backend_ticks" "$run_queries")
    run_client_us=$(awk -v s="${client_cpu:-0}" -v q="$run_queries" 'BEGIN { if (q > 0 && s > 0) printf "%.1f", s * 1e6 / q; else print "NA" }')
    if [[ $run_ok != 1 || -z $(awk '/^[[:space:]]*queries:/' "$logfile") ]]; then
        run_ok=0
        echo "--- sysbench $test ($mode, port $port) failed; tail of $logfile:" >&2
        tail -n 20 "$logfile" >&2 || true
    fi
}

rows=()
failed=0

for test in "${tests[@]}"; do
    for mode in "${modes[@]}"; do
        for ((round = 1; round <= ROUNDS; round++)); do
            if ((round % 2 == 1)); then order=(direct tessera); else order=(tessera direct); fi
            d_qps=0 d_p95=NA d_err=0 t_qps=0 t_p95=NA t_err=0 cpu_us=NA
            d_backend=NA t_backend=NA d_client=NA t_client=NA d_idle=NA t_idle=NA
            for target in "${order[@]}"; do
                logfile="$work/$test.$mode.$round.$target.log"
                log "$test ps-mode=$mode round $round/$ROUNDS: $target"
                if [[ $target == direct ]]; then
                    run_sysbench "$test" "$mode" "$backend_port" "$logfile"
                    d_qps=$run_qps d_p95=$run_p95 d_err=$run_errors
                    d_backend=$run_backend_us d_client=$run_client_us d_idle=$run_idle
                else
                    before=$(cpu_ticks "$proxy_pid")
                    run_sysbench "$test" "$mode" "$proxy_port" "$logfile"
                    after=$(cpu_ticks "$proxy_pid")
                    t_qps=$run_qps t_p95=$run_p95 t_err=$run_errors
                    t_backend=$run_backend_us t_client=$run_client_us t_idle=$run_idle
                    if ((run_queries > 0)); then
                        cpu_us=$(per_query $((after - before)) "$run_queries")
                    fi
                fi
                if [[ $run_ok != 1 ]] || ((run_errors > 0)); then
                    failed=1
                fi
                if [[ $run_ok != 1 && $target == direct ]]; then d_err=FAIL; fi
                if [[ $run_ok != 1 && $target == tessera ]]; then t_err=FAIL; fi
            done
            ratio=$(awk -v d="$d_qps" -v t="$t_qps" 'BEGIN { if (d > 0) printf "%.3f", t / d; else print "NA" }')
            rows+=("$test|$mode|$round|$d_qps|$t_qps|$ratio|$d_p95|$t_p95|$d_err/$t_err|$cpu_us|$d_backend/$t_backend|$d_client/$t_client|$d_idle/$t_idle")
        done
    done
done

echo
echo "sysbench: shards=$SHARDS threads=$THREADS time=${TIME}s rounds=$ROUNDS table-size=$TABLE_SIZE ($(nproc) CPUs)"
echo "CPU µs/query: the proxy's; MariaDB's and sysbench's, direct/through Tessera; idle: % of all CPU"
fmt='%-18s %-8s %5s %12s %12s %8s %17s %11s %7s %13s %13s %9s\n'
# shellcheck disable=SC2059
printf "$fmt" test ps-mode round "direct QPS" "tessera QPS" ratio "p95 ms dir/tes" "errors d/t" proxy "mariadb d/t" "sysbench d/t" "idle d/t"
for row in "${rows[@]}"; do
    IFS='|' read -r test mode round d_qps t_qps ratio d_p95 t_p95 errs cpu_us backend client idle <<<"$row"
    # shellcheck disable=SC2059
    printf "$fmt" "$test" "$mode" "$round" "$d_qps" "$t_qps" "$ratio" "$d_p95/$t_p95" "$errs" "$cpu_us" "$backend" "$client" "$idle"
done
echo
for test in "${tests[@]}"; do
    for mode in "${modes[@]}"; do
        printf '%s\n' "${rows[@]}" | awk -F'|' -v t="$test" -v m="$mode" '
            $1 == t && $2 == m && $6 != "NA" { sum += $6; n++ }
            $1 == t && $2 == m && $10 != "NA" { cpu += $10; c++ }
            END {
                printf "mean %s ps-mode=%s: tessera/direct QPS ratio %s over %d round(s), proxy CPU %s µs/query\n",
                    t, m, (n ? sprintf("%.3f", sum / n) : "NA"), n, (c ? sprintf("%.2f", cpu / c) : "NA")
            }'
    done
done

if ((failed)); then
    logs=$(mktemp -d "${TMPDIR:-/tmp}/tessera-sysbench-logs.XXXXXX")
    cp -- "$work"/*.log "$work"/playground.out "$work"/playground.err "$logs"/ 2>/dev/null || true
    echo "sysbench.sh: some runs failed or reported errors; logs kept in $logs" >&2
    exit 1
fi
