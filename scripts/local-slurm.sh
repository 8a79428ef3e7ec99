#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying discograd's SLURM sweeps before a
# real cluster and for its tests (tests/test_slurm.py, run by .ci/run). Debian or Ubuntu; needs
# root (or sudo) and apt. SLURM 22.05 as Debian 12 ships it.
#
#   scripts/local-slurm.sh start    install what is missing, configure, start; waits for the node
#   scripts/local-slurm.sh stop     stop the daemons this script started (configuration stays)
#   scripts/local-slurm.sh status   the node and whether accounting answers
#
# One node (this machine: its CPUs and memory as `slurmd -C` reports them), one partition
# `debug` (the default), no time limit of its own. Jobs run as the user who submits them.
# Accounting: slurmdbd over a local MariaDB, so that `sacct` answers. Submitit (the launcher
# behind hydra/launcher=submitit_slurm) polls job states with sacct; without accounting storage
# every poll prints a warning and a job's final state is guessed.
# It refuses to touch a SLURM configuration it did not write (/etc/slurm/slurm.conf without its
# first line): on a machine that has a cluster, use that one.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
MARK="# written by discograd scripts/local-slurm.sh"
CLUSTER=discograd
PARTITION=debug
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
say() { echo "local-slurm: $*" >&2; }
die() { say "$*"; exit 1; }

check_root() {
    [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null \
        || die "needs root or password-less sudo (it installs packages and starts daemons)"
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

write_config() {
    if [ -f "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
        die "$CONF exists and was not written by this script: this machine has a SLURM setup of its own; use it"
    fi
    local node
    node=$(slurmd -C | head -n 1)          # NodeName=HOST CPUs=... RealMemory=...
    as_root mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
    as_root tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a requeued job (scontrol requeue, submitit's timeout handler) waits one credential lifetime
# before it may start again: 10 s here instead of the default 120 s
AuthInfo=cred_expire=10
JobRequeue=1
MinJobAge=300
KillWait=30
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd reads the database as root over MariaDB's socket (unix_socket authentication: no
    # password anywhere); the file must be private to SlurmUser
    as_root tee "$DBD_CONF" >/dev/null <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    as_root chmod 600 "$DBD_CONF"
}

running() { pgrep -x "$1" >/dev/null; }

wait_for() {      # wait_for SECONDS WHAT COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$((limit * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up in ${limit} s (logs: /var/log/slurm/, /var/log/mysql/)"
}

start() {
    check_root
    install_packages
    write_config
    if ! running munged; then
        as_root install -d -o munge -g munge -m 755 /run/munge
        as_root runuser -u munge -- /usr/sbin/munged
    fi
    wait_for 10 munged sh -c 'munge -n | unmunge'
    if ! running mariadbd; then
        as_root install -d -o mysql -g mysql -m 755 /run/mysqld
        as_root sh -c 'nohup /usr/sbin/mariadbd --user=mysql >/var/log/slurm/mariadb.log 2>&1 &'
    fi
    wait_for 30 MariaDB as_root mysqladmin ping
    running slurmdbd || as_root slurmdbd
    wait_for 30 slurmdbd as_root sacctmgr -n list cluster
    if ! as_root sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        as_root sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    running slurmctld || as_root slurmctld
    running slurmd || as_root slurmd
    wait_for 30 slurmctld scontrol ping
    local node
    node=$(slurmd -C | head -n 1 | sed 's/NodeName=\([^ ]*\).*/\1/')
    # a node left down or drained by an earlier stop comes back
    if sinfo -h -n "$node" -o %T | grep -qiE 'down|drain'; then
        as_root scontrol update nodename="$node" state=resume || true
    fi
    wait_for 30 "node $node" sh -c "sinfo -h -n $node -o %T | grep -qE '^(idle|mixed|allocated)'"
    say "up: partition $PARTITION, node $node ($(sinfo -h -n "$node" -o '%c CPUs, %m MB')), accounting by slurmdbd"
}

stop() {
    check_root
    running slurmctld && as_root scontrol shutdown >/dev/null 2>&1 || true
    for d in slurmd slurmctld slurmdbd; do
        if running $d; then as_root pkill -x $d || true; fi
    done
    if running mariadbd; then as_root mysqladmin shutdown >/dev/null 2>&1 || as_root pkill -x mariadbd || true; fi
    if running munged; then as_root pkill -x munged || true; fi
    for d in slurmd slurmctld slurmdbd mariadbd munged; do
        for _ in $(seq 20); do running $d || break; sleep 0.5; done
    done
    say "stopped"
}

status() {
    sinfo -o '%P %a %D %T %c %m' && sacct -n -X -S now-1minute >/dev/null && say "accounting answers"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
