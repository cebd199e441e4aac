#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster on this machine (for the `slurm` test and for trying the
# SLURM profile by hand). Not for production: root daemons, no accounting, no cgroups.
#
#   pipelines/testing/slurm-up.sh [STATE_DIR]     # prints STATE_DIR; state, logs, jobcomp.txt live there
#   pipelines/testing/slurm-down.sh STATE_DIR     # stops the daemons by PID, removes our slurm.conf
#
# - Installs slurmctld, slurmd, slurm-client and munge with apt-get when they are missing and we are root.
# - The config must be /etc/slurm/slurm.conf: Snakemake's SLURM job-step plugin removes every SLURM_*
#   variable (SLURM_CONF included) before it calls srun inside a job. An existing slurm.conf that this
#   script did not write is never touched (exit 77).
# - One node (this host, CPUs=2), partitions `cpu` (default) and `gpu` (same node, no GPUs: the names of
#   pipelines/profiles/slurm work unchanged), jobcomp/filetxt records every finished job in
#   STATE_DIR/jobcomp.txt, no accounting database (so `sacct` does not work: use `squeue`).
#
# Exit status: 0 = cluster up (every daemon answers, the node is idle); 77 = this machine cannot run it
# (not root, no apt-get, install failed, foreign slurm.conf): callers may skip; anything else = a failure.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# ghanet throwaway test cluster"
cannot() { echo "slurm-up: cannot start a test cluster here: $*" >&2; exit 77; }
fail() { echo "slurm-up: $*" >&2; exit 1; }

need=()
for b in slurmctld slurmd sbatch squeue scontrol munged; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need+=("$b")
done
if [ "${#need[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || cannot "missing ${need[*]} and not root (install slurmctld slurmd slurm-client munge)"
    command -v apt-get >/dev/null 2>&1 || cannot "missing ${need[*]} and no apt-get"
    echo "slurm-up: installing slurmctld slurmd slurm-client munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || cannot "apt-get update failed"
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || cannot "apt-get install slurmctld slurmd slurm-client munge failed"
fi
[ "$(id -u)" = 0 ] || cannot "the daemons and $CONF need root"
export PATH="$PATH:/usr/sbin:/sbin"

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and was not written by this script (a real cluster?); not touching it"
fi
if [ -e "$CONF" ]; then
    old=$(sed -n 's/^# state: //p' "$CONF")
    if [ -n "$old" ] && [ -f "$old/slurmctld.pid" ] && kill -0 "$(cat "$old/slurmctld.pid")" 2>/dev/null; then
        fail "a test cluster is already running (state $old); stop it first: $(dirname "$0")/slurm-down.sh $old"
    fi
fi

STATE=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ghanet-slurm.XXXXXX")}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
chmod 700 "$STATE"
mkdir -p "$STATE/ctld" "$STATE/slurmd" "$STATE/munge"
chmod 700 "$STATE/munge"

# ---- munge (authentication between the daemons and the client commands) ----
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
MUNGE_SOCKET="$STATE/munge/munge.socket"
setsid munged --foreground --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munge.seed" </dev/null >>"$STATE/munge/munged.out" 2>&1 &
echo $! >"$STATE/munged.pid"
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || fail "munged did not start; see $STATE/munge/munged.log"

# ---- slurm.conf ----
HOST=$(hostname -s)
MEM_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
mkdir -p "$(dirname "$CONF")"
cat >"$CONF.tmp" <<CONF_EOF
$MARK (pipelines/testing/slurm-up.sh); removed by slurm-down.sh
# state: $STATE
ClusterName=ghanettest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/ctld/slurmctld.pid.daemon
SlurmdPidFile=$STATE/slurmd/slurmd.pid.daemon
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue this long (the Snakemake executor polls with squeue)
MinJobAge=600
SchedulerParameters=sched_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=2 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
CONF_EOF
mv "$CONF.tmp" "$CONF"

# ---- daemons (foreground mode under setsid, so the PIDs we record are the daemons') ----
setsid slurmctld -D -i </dev/null >>"$STATE/slurmctld.out" 2>&1 &
echo $! >"$STATE/slurmctld.pid"
setsid slurmd -D </dev/null >>"$STATE/slurmd.out" 2>&1 &
echo $! >"$STATE/slurmd.pid"

for _ in $(seq 100); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
        echo "$STATE"
        exit 0
    fi
    for d in slurmctld slurmd; do
        kill -0 "$(cat "$STATE/$d.pid")" 2>/dev/null \
            || fail "$d exited; see $STATE/$d.log and $STATE/$d.out"
    done
    sleep 0.2
done
fail "the node did not become idle in 20 s: $(sinfo -N 2>&1 | tail -1); logs in $STATE"
