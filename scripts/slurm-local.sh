#!/usr/bin/env bash
# A real single-node SLURM on localhost, for the tests and for trying the slurm/ scripts on one machine.
#
# Usage:
#   scripts/slurm-local.sh start    # install (Debian slurmctld/slurmd/slurm-client/munge) if missing, start; idempotent
#   scripts/slurm-local.sh status   # daemons, sinfo; exit 1 when not up
#   scripts/slurm-local.sh env      # prints `export SLURM_CONF=...`: eval "$(scripts/slurm-local.sh env)"
#   scripts/slurm-local.sh stop     # stops the daemons this script started, by the PIDs it recorded
#
# Everything (slurm.conf, gres.conf, fake GPU devices, spool, state, logs, pid files) lives in one state directory,
# ENHANCER_SLURM_DIR (default /tmp/enhancer-slurm); /etc/slurm is not touched, so clients need SLURM_CONF.
# The node declares two fake GPUs (character devices aliasing /dev/null) so that production scripts asking for
# --gres=gpu:1 run unchanged and SLURM sets CUDA_VISIBLE_DEVICES per task; torch finds no CUDA and uses the CPU.
# Needs root (apt-get, munged as the munge user, mknod). Known to work on Debian 12 without systemd.
set -euo pipefail

STATE_DIR="${ENHANCER_SLURM_DIR:-/tmp/enhancer-slurm}"
CONF="$STATE_DIR/etc/slurm.conf"
CTLD_PORT="${ENHANCER_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${ENHANCER_SLURM_SLURMD_PORT:-6818}"
NODE="$(hostname -s)"
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm-local: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

alive() {  # alive PIDFILE: the pid file names a running process
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ "$(id -u)" == 0 ]] || die "packages ${missing[*]} missing and not root: install them (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null || die "packages ${missing[*]} missing and no apt-get: install SLURM and munge by hand"
    say "installing ${missing[*]}"
    apt-get update -qq
    # The postinst scripts try to start the daemons and cannot without systemd; that is harmless, we start them.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
    # A munged that already answers (ours or the system's) is reused; only one we start is recorded for `stop`.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 "$STATE_DIR/munge"
    # munged refuses to run as root ("Logfile is insecure"): run it as its own user.
    runuser -u munge -- /usr/sbin/munged --pid-file="$STATE_DIR/munge/munged.pid" \
        --log-file="$STATE_DIR/munge/munged.log"
    cp "$STATE_DIR/munge/munged.pid" "$STATE_DIR/run/munged.pid"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged did not come up; see $STATE_DIR/munge/munged.log"
}

write_config() {
    local mem cpus
    # RealMemory must not exceed what slurmd sees, or the node is drained ("Low RealMemory"): keep a margin.
    mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    mem=$((mem * 8 / 10))
    cpus="$(nproc)"
    install -d "$STATE_DIR"/{etc,dev,spool,state,log,run}
    # Fake GPUs: gres.conf only accepts character devices (a plain file is refused or CUDA_VISIBLE_DEVICES goes
    # silently missing); major 1 minor 3 is /dev/null.
    for i in 0 1; do [[ -c "$STATE_DIR/dev/gpu$i" ]] || mknod "$STATE_DIR/dev/gpu$i" c 1 3; done
    cat >"$STATE_DIR/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$STATE_DIR/dev/gpu[0-1]
EOF
    cat >"$CONF.new" <<EOF
# Written by scripts/slurm-local.sh: a single-node test cluster on localhost. Do not use in production.
ClusterName=enhancer-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
# No cgroups or systemd here: track processes by parentage, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# No slurmdbd: no sacct (use scontrol show job within MinJobAge, or the jobcomp file).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/log/jobcomp.txt
MailProg=/bin/true
# Keep finished jobs visible to scontrol for an hour; schedule array waves and dependencies at once (default 3 s).
MinJobAge=3600
SchedulerParameters=batch_sched_delay=0
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued: enough for a clean stop.
KillWait=10
ReturnToService=2
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
# Without DefMemPerCPU every job takes the whole node's memory and jobs run one at a time.
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$((mem / cpus / 2))
EOF
    mv "$CONF.new" "$CONF"
}

start() {
    install_packages
    install -d "$STATE_DIR/run"
    if alive "$STATE_DIR/run/slurmctld.pid" && alive "$STATE_DIR/run/slurmd.pid"; then
        say "already running ($STATE_DIR)"
        wait_idle
        return 0
    fi
    start_munge
    write_config
    export SLURM_CONF="$CONF"
    # -c: start clean (no jobs left from an earlier run of the test cluster).
    alive "$STATE_DIR/run/slurmctld.pid" || slurmctld -c -f "$CONF"
    alive "$STATE_DIR/run/slurmd.pid" || slurmd -f "$CONF"
    wait_idle
    say "up: export SLURM_CONF=$CONF (state, logs in $STATE_DIR)"
}

wait_idle() {
    export SLURM_CONF="$CONF"
    local state=""
    for _ in $(seq 100); do
        state="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
        case "$state" in
            idle | mix | alloc) return 0 ;;
            drain* | drng | down*)  # a node left down by an earlier run: ReturnToService=2 may need a nudge
                scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    die "node $NODE not idle after 20 s (state '${state:-unknown}'); see $STATE_DIR/log/slurmctld.log and slurmd.log"
}

stop() {
    local name pid
    # Stop only what this script started, by the PIDs it recorded; never by process name.
    for name in slurmd slurmctld munged; do
        if alive "$STATE_DIR/run/$name.pid"; then
            pid="$(cat "$STATE_DIR/run/$name.pid")"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "stopped $name ($pid)"
        fi
        rm -f "$STATE_DIR/run/$name.pid"
    done
}

status() {
    local ok=0 name
    for name in munged slurmctld slurmd; do
        if alive "$STATE_DIR/run/$name.pid"; then say "$name running (pid $(cat "$STATE_DIR/run/$name.pid"))"
        elif [[ $name == munged ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munged running (not ours)"
        else say "$name not running"; ok=1; fi
    done
    [[ -f "$CONF" ]] && SLURM_CONF="$CONF" sinfo 2>/dev/null || true
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env (state in ENHANCER_SLURM_DIR, now $STATE_DIR)" ;;
esac
