#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying profiles/slurm and for the cluster tests.
#
#   scripts/slurm-local.sh install   # Debian/Ubuntu packages slurm-wlm and munge (needs root)
#   scripts/slurm-local.sh start     # write the config, start munged, slurmctld, slurmd; wait for the node
#   scripts/slurm-local.sh status    # show the node and the queue
#   scripts/slurm-local.sh stop      # stop the three daemons
#   scripts/slurm-local.sh install start   # commands run in the order given
#
# Every command is safe to repeat: `start` on a running cluster with an unchanged config does nothing.
# The cluster has one node, `localhost`, in one partition, `local`, without accounting (no slurmdbd),
# so job states come from squeue: profiles/slurm sets the SLURM plugin up for that.
#
# Settings (environment variables):
#   SLURM_LOCAL_CPUS    CPUs the node offers (default: nproc, at least 4). More than the machine has
#                       lets several jobs run at once even on a small machine, which suits I/O-bound
#                       work such as downloads (and shows how per-host limits are shared).
#   SLURM_LOCAL_MEM_MB  memory the node offers in MB (default and maximum: what `slurmd -C` finds).
#
# The config must live at /etc/slurm/slurm.conf: SLURM's job steps drop SLURM_* variables, SLURM_CONF
# included, so a config elsewhere would not be found inside jobs.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
RUN_DIR=/run/slurm-local
NODE=localhost
PARTITION=local

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "slurm-local: '$1' needs root (try: sudo $0 $1)" >&2
        exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        echo "slurm-local: slurm-wlm and munge are installed"
        return
    fi
    need_root install
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
}

node_cpus() {
    local found
    found=$(nproc)
    [ "$found" -ge 4 ] || found=4
    echo "${SLURM_LOCAL_CPUS:-$found}"
}

node_memory() {
    local found
    found=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    local wanted=${SLURM_LOCAL_MEM_MB:-$found}
    if [ "$wanted" -gt "$found" ]; then
        wanted=$found
    fi
    echo "$wanted"
}

write_config() {
    local cpus mem
    cpus=$(node_cpus)
    mem=$(node_memory)
    cat <<CONF
# Written by scripts/slurm-local.sh: a single-node cluster on localhost, no accounting.
ClusterName=thumbfeat-local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node may claim more CPUs than the machine has (SLURM_LOCAL_CPUS).
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol this long (s); the SLURM plugin needs at least 120.
MinJobAge=300
SchedulerType=sched/backfill
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
DefMemPerCPU=1000
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

alive() {  # alive PIDFILE NAME: the daemon NAME that wrote PIDFILE still runs (not a reused pid)
    [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}

start_munge() {
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if alive /run/munge/munged.pid munged && munge -n >/dev/null 2>&1; then
        return
    fi
    runuser -u munge -- munged --force
    for _ in $(seq 50); do
        munge -n >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "slurm-local: munged did not start (see /var/log/munge/munged.log)" >&2
    exit 1
}

node_state() {
    sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true
}

start() {
    need_root start
    if ! command -v slurmctld >/dev/null; then
        echo "slurm-local: SLURM is not installed; run: $0 install" >&2
        exit 1
    fi
    install -d "$CONF_DIR" "$RUN_DIR"
    install -d -m 0755 "$LOG_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
    local new
    new=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    write_config >"$new"
    chmod 0644 "$new"
    if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
        rm -f "$new"
    else
        stop_daemons
        mv "$new" "$CONF"
    fi
    start_munge
    alive "$RUN_DIR/slurmctld.pid" slurmctld || slurmctld
    alive "$RUN_DIR/slurmd.pid" slurmd || slurmd -N "$NODE"
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case "$state" in
            idle|mix|alloc|comp) echo "slurm-local: node $NODE is $state"; return ;;
            down|drain|drng|fail)
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    echo "slurm-local: node $NODE did not become ready (state '${state:-none}'); see $LOG_DIR/" >&2
    exit 1
}

stop_one() {  # stop_one PIDFILE NAME
    if alive "$1" "$2"; then
        local pid
        pid=$(cat "$1")
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        echo "slurm-local: process $pid did not stop" >&2
        return 1
    fi
}

stop_daemons() {
    stop_one "$RUN_DIR/slurmd.pid" slurmd
    stop_one "$RUN_DIR/slurmctld.pid" slurmctld
}

stop() {
    need_root stop
    stop_daemons
    stop_one /run/munge/munged.pid munged
    echo "slurm-local: stopped"
}

status() {
    if ! command -v sinfo >/dev/null; then
        echo "slurm-local: SLURM is not installed"
        exit 1
    fi
    sinfo -N -o '%N %P %t %c %m' && squeue
}

[ $# -gt 0 ] || { echo "usage: $0 install|start|stop|status ..." >&2; exit 2; }
for command in "$@"; do
    case "$command" in
        install) install_packages ;;
        start) start ;;
        stop) stop ;;
        status) status ;;
        *) echo "usage: $0 install|start|stop|status ..." >&2; exit 2 ;;
    esac
done
