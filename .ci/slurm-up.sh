#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster (munge + slurmctld + slurmd) on this
# machine so CI and tests can submit jobs with sbatch and watch them with squeue.
# Runs as root without systemd (CI containers), so daemons are started directly.
# Idempotent: a running cluster with an unchanged config is left alone.
set -euo pipefail

NODE=$(hostname -s)
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm

log() { echo "slurm-up: $*" >&2; }

# On any failure show the daemon logs: the sbatch/sinfo errors alone rarely say why.
dump_logs() {
    log "FAILED; daemon log tails follow"
    for f in "$LOGDIR"/*.log /var/log/munge/munged.log; do
        if [ -f "$f" ]; then echo "==> $f <=="; tail -n 30 "$f"; fi
    done >&2
}
out=   # temp dir of the test job, removed on exit
on_exit() {
    local rc=$?
    [ -z "$out" ] || rm -rf "$out"
    [ "$rc" -eq 0 ] || dump_logs
    exit "$rc"
}
trap on_exit EXIT

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
# Busy (mixed/allocated) counts as up: a rerun must not wait for running jobs.
node_up() { case "$(node_state)" in idle|mixed|allocated) return 0 ;; esac; return 1; }

# Ask the daemons themselves: pgrep also matches dead (zombie) ones, because the
# container's PID 1 may not reap them, and sinfo lags a dead slurmd by minutes.
ctld_alive() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
slurmd_alive() { scontrol show slurmd >/dev/null 2>&1; }

# --- packages (only when missing, so warm CI images skip apt entirely) ------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurm-wlm munge
fi

# --- munge: SLURM authenticates every RPC through it ------------------------
if [ ! -s /etc/munge/munge.key ]; then
    if [ -x /usr/sbin/mungekey ]; then
        /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
# The package's /run dirs are normally made by systemd-tmpfiles, which does not run here.
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    pkill -x munged 2>/dev/null || true   # a stale munged would hold the socket
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null

# --- slurm.conf: node hardware straight from slurmd -C so slurmd never drains
# itself for "low resources"; RealMemory lowered ~5% for slack vs. the OS.
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
hw=$(slurmd -C | head -n1)
get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
mem=$(( $(get RealMemory) * 95 / 100 ))
cpus=$(get CPUs)
cat >"$CONF.new" <<EOF
# Written by .ci/slurm-up.sh: single-node CI cluster, no accounting, no cgroups.
ClusterName=litpipe
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job lacking --mem books the whole node's memory and jobs
# run one at a time; a per-CPU share keeps CPUs the limiting resource.
DefMemPerCPU=$(( mem / cpus ))
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Reject jobs that can never fit (e.g. -c 3 on 2 CPUs) at sbatch time instead of
# leaving them PENDING forever, which would hang a test run.
EnforcePartLimits=ALL
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$NODE CPUs=$cpus Boards=$(get Boards) SocketsPerBoard=$(get SocketsPerBoard) CoresPerSocket=$(get CoresPerSocket) ThreadsPerCore=$(get ThreadsPerCore) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if cmp -s "$CONF.new" "$CONF"; then
    rm -f "$CONF.new"
    # Fast path for a rerun: same config, both daemons answer, node takes jobs.
    if ctld_alive && slurmd_alive && node_up; then
        log "already running, node $NODE $(node_state)"
        exit 0
    fi
else
    # A changed config needs fresh daemons; wait until the old ones have exited
    # (-r skips zombies) so the new ones can bind their ports.
    mv "$CONF.new" "$CONF"
    scontrol shutdown 2>/dev/null || pkill '^slurm(ctld|d)$' || true
    for _ in $(seq 30); do pgrep -r R,S,D '^slurm(ctld|d)$' >/dev/null || break; sleep 0.5; done
fi

# --- daemons: both fork into the background by themselves -------------------
ctld_alive || slurmctld
slurmd_alive || slurmd

# Wait for the node to register; resume it if an earlier run left it down/drained.
for _ in $(seq 60); do
    node_up && break
    case "$(node_state)" in
        down*|drain*|fail*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
node_up || { log "node $NODE not up after 60s (state: '$(node_state)')"; exit 1; }

# --- end-to-end check: a real job through the scheduler ---------------------
out=$(mktemp -d)
# Poll squeue -t all (as the Snakemake plugin does, accounting being off) rather
# than sbatch --wait, whose back-off polling adds ~7 s to a 1 s job.
jid=$(sbatch --parsable --time=1 --output="$out/%j.out" --wrap hostname)
for _ in $(seq 240); do
    st=$(squeue -h -t all -j "$jid" -o %T 2>/dev/null || true)
    case "$st" in PENDING|CONFIGURING|RUNNING|COMPLETING) sleep 0.5 ;; *) break ;; esac
done
[ "$st" = COMPLETED ] || { log "test job $jid ended as '$st'"; exit 1; }
grep -qx "$NODE" "$out/$jid.out"
log "OK: cluster litpipe up, node $NODE ($cpus CPUs, ${mem} MB) idle, test job ran"
