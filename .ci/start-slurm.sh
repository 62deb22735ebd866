#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the cluster tests
# (tests/cluster/). Idempotent: installs Debian's slurm-wlm and munge if they
# are missing, writes /etc/slurm/slurm.conf for this host (unless a
# slurm.conf not written by this script is already there), starts munged,
# slurmctld and slurmd if they are not running, and waits until the node
# accepts jobs. Needs root. Takes about a minute from a machine without the
# packages, a few seconds when everything already runs.
#
#   bash .ci/start-slurm.sh            # start (or check) the cluster
#
# Exits non-zero with the reason if the cluster cannot be started; the tests
# then skip with that reason (tests/cluster/conftest.py).
set -euo pipefail

WAIT_SECONDS=${SLURM_START_TIMEOUT:-90}
MARKER="# written by volara .ci/start-slurm.sh"
CONF=/etc/slurm/slurm.conf
start=$(date +%s)

log() { echo "start-slurm: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (installs packages, starts daemons)"
  exit 1
fi

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  local packages=(slurm-wlm munge)
  # wait for another apt to finish instead of failing at once
  local apt=(apt-get -q -o DPkg::Lock::Timeout=300)
  if ! "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >/tmp/start-slurm-apt.log 2>&1; then
    "${apt[@]}" update >>/tmp/start-slurm-apt.log 2>&1 || true
    "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >>/tmp/start-slurm-apt.log 2>&1 || {
      tail -n 20 /tmp/start-slurm-apt.log >&2
      log "could not install ${packages[*]} (log: /tmp/start-slurm-apt.log)"
      exit 1
    }
  fi
}

for program in sbatch slurmctld slurmd munged; do
  if ! command -v "$program" >/dev/null; then
    log "installing slurm-wlm and munge"
    install_packages
    break
  fi
done

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
  done
  munge -n | unmunge >/dev/null || { log "munged does not answer"; exit 1; }
fi

# ------------------------------------------------------------- slurm.conf
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
# Declare at least 4 CPUs, more than a 2-core machine has
# (SlurmdParameters=config_overrides accepts that): in a pipeline a
# downstream task's worker job may wait for upstream blocks while holding a
# CPU, and with only 2 slots a replacement for a cancelled upstream worker
# could then wait forever behind it.
slots=$(( cpus > 4 ? cpus : 4 ))

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  log "keeping the existing $CONF (not written by this script)"
else
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >"$CONF.new" <<EOF
$MARKER
ClusterName=volara-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$slots RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    changed=1
  else
    rm "$CONF.new"
  fi
fi

# ---------------------------------------------------------------- daemons
running() { pgrep -x "$1" >/dev/null; }

stop() {  # a daemon started with the pid file of our slurm.conf
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
}

if [ "${changed:-0}" = 1 ] && { running slurmctld || running slurmd; }; then
  log "slurm.conf changed: restarting the daemons"
  stop /run/slurmd.pid
  stop /run/slurmctld.pid
fi
if ! running slurmctld; then
  log "starting slurmctld"
  slurmctld
fi
if ! running slurmd; then
  log "starting slurmd"
  slurmd
fi

deadline=$(( $(date +%s) + WAIT_SECONDS ))
until scontrol ping 2>/dev/null | grep -q "is UP"; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
    log "slurmctld did not come up within ${WAIT_SECONDS}s"
    exit 1
  fi
  sleep 1
done

node_state() { sinfo --noheader --nodes="$host" --format=%T 2>/dev/null | head -n 1; }
while true; do
  state=$(node_state)
  case "$state" in
    idle | mixed | allocated) break ;;
    down* | drain* | fail*)
      # left over from an earlier start (e.g. "Not responding" after a
      # restart): the node is fine now
      scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 20 /var/log/slurm/slurmd.log >&2 || true
    log "node $host is '$state', not idle, after ${WAIT_SECONDS}s"
    exit 1
  fi
  sleep 1
done

log "node $host is $state ($slots job slots); ready after $(( $(date +%s) - start ))s"
