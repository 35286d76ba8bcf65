#!/usr/bin/env bash
# Run every benchmark at this checkout, one after another, and keep what each printed.
#
#   sudo bash bench/run_all.sh [OUTDIR]        # default: bench/results/COMMIT-DATE
#   ONLY="cli lab" sudo bash bench/run_all.sh  # some of them
#
# This is the one procedure the figures in bench/README.md come from: run it on a quiet
# machine at the commit the README describes, then copy each table from OUTDIR/summary.md
# into the README's section of that benchmark, with the commit, command and date printed
# above it. Each benchmark prints its own command, commit and load average, alternates
# its sides, reports the median over all its runs with the spread, and exits non-zero
# (a FAILED line, no figure) when it measured nothing. A benchmark file in bench/ that is
# not listed below makes this script fail: every benchmark is re-run, or none is.
#
# It holds /tmp/pycnm-locks/bench.lock for the whole run (and docker.lock around the
# Docker benchmark), so no other benchmark of this machine runs at the same time.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# name -> the command's arguments after "python3 bench/bench_NAME.py" (the defaults the
# README quotes).
declare -A ARGS=(
    [cli]="--count 60"
    [lab]="--sizes 50,200,1000 --runs 3 --large-runs 1"
    [attach]="--sizes 10,100,1000 --naive 30"
    [veth_growth]="--count 1000 --runs 1"
    [docker]="--runs 30 --creates 15 --rounds 3"
    [overlay]="--hosts 3 --endpoints 100 --iperf-seconds 5 --iperf-runs 5"
    [overlay_scale]="--overlays 10 --endpoints 100 --rounds 10 --ignored 50 --idle 5"
    [multihost_docker]="--rounds 10 --iperf-runs 5"
    [dns]="--seconds 10 --runs 3"
    [dns_design]="--seconds 5 --sandboxes 200"
    [lb]="--seconds 1.5 --rounds 12 --clients 50 --services 20 --changes 30"
    [etcd_fanout]="--hosts 100,1000 --events 40 --burst 20 --workers 4 --idle 10 --lease-ttl 15"
)
ORDER=(cli lab attach veth_growth docker overlay overlay_scale multihost_docker etcd_fanout dns dns_design lb)

if [ "$(id -u)" -ne 0 ]; then
    echo "run_all.sh: run as root (sudo bash bench/run_all.sh)" >&2
    exit 1
fi
unlisted=()
for file in bench/bench_*.py; do
    name=${file#bench/bench_}
    name=${name%.py}
    [ -n "${ARGS[$name]+set}" ] || unlisted+=("$file")
done
if ((${#unlisted[@]})); then
    echo "run_all.sh: not listed here, so it would not be re-run: ${unlisted[*]}" >&2
    exit 1
fi

commit=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit+dirty"
out=${1:-bench/results/$commit-$(date +%Y%m%d-%H%M)}
mkdir -p "$out"
mkdir -p /tmp/pycnm-locks
exec 9>/tmp/pycnm-locks/bench.lock
flock 9

summary="$out/summary.md"
{
    echo "# Benchmarks at $commit"
    echo
    echo "$(date '+%Y-%m-%d %H:%M %z'), $(uname -r), $(nproc) cpus, python $(python3 -V 2>&1)"
} >"$summary"
failed=()
for name in "${ORDER[@]}"; do
    file="bench/bench_$name.py"
    [ -e "$file" ] || continue  # listed for a benchmark this checkout does not have yet
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        continue
    fi
    read -r -a args <<<"${ARGS[$name]}"
    command=(python3 "$file" "${args[@]}")
    # (bench_dns takes docker.lock itself)
    if [ "$name" = docker ] || [ "$name" = multihost_docker ]; then
        command=(flock /tmp/pycnm-locks/docker.lock "${command[@]}")
    fi
    echo "== $name: ${command[*]}" >&2
    started=$(date +%s)
    "${command[@]}" >"$out/$name.txt" 2>&1
    code=$?
    took=$(($(date +%s) - started))
    status="exit $code after ${took} s"
    ((code == 0)) || failed+=("$name")
    echo "   $status ($out/$name.txt)" >&2
    {
        echo
        echo "## $name"
        echo
        echo "Command: \`${command[*]}\` at $commit; $status."
        echo
        echo '```'
        cat "$out/$name.txt"
        echo '```'
    } >>"$summary"
done
echo "summary: $summary" >&2
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (no figures from them)" >&2
    exit 1
fi
