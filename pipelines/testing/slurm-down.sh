#!/usr/bin/env bash
# Stop the test cluster started by slurm-up.sh: the daemons by their recorded PIDs, then remove the
# /etc/slurm/slurm.conf that slurm-up.sh wrote. The state folder (logs, jobcomp.txt) is kept unless
# --purge is given.
#
#   pipelines/testing/slurm-down.sh STATE_DIR [--purge]
set -uo pipefail
STATE=${1:?usage: slurm-down.sh STATE_DIR [--purge]}
CONF=/etc/slurm/slurm.conf
MARK="# ghanet throwaway test cluster"
[ -d "$STATE" ] || { echo "slurm-down: no such state folder: $STATE" >&2; exit 1; }

# jobs still queued or running would leave slurmstepd processes behind
if [ -f "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    timeout 20 scancel --full --quiet $(timeout 10 squeue -h -o %i 2>/dev/null) 2>/dev/null || true
fi
for d in slurmd slurmctld munged; do
    f="$STATE/$d.pid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$f"
done
if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && grep -qxF "# state: $(cd "$STATE" && pwd)" "$CONF"; then
    rm -f "$CONF"
fi
if [ "${2:-}" = "--purge" ]; then
    rm -rf "$STATE"
fi
exit 0
