#!/usr/bin/env bash
# A real one-machine Slurm cluster for the tests: munged, slurmctld and one or more slurmd on localhost, every
# file (configuration, state, logs, munge key and socket) under one folder, nothing in /etc or /var.
#
#   tests/slurm/local_slurm.sh install          # apt-get install slurm-wlm munge when slurmctld is missing (root;
#                                               # nothing with VPPO_SKIP_SLURM_TESTS=1, which skips the Slurm tier)
#   tests/slurm/local_slurm.sh start DIR [N]    # N slurmd nodes (default 1), each with 8 fake GPUs
#   tests/slurm/local_slurm.sh stop DIR         # stops exactly the daemons that `start DIR` started
#
# After `start`, `source DIR/env.sh` points sbatch/srun/squeue/scontrol at this cluster (SLURM_CONF, and DIR/bin
# first on PATH: wrappers that keep naming this cluster's slurm.conf inside jobs, where SLURM_* is stripped).
# The GPUs are generic resources backed by empty files: `--gres=gpu:8` and `--gpus=N` schedule as on a GPU node,
# and no CUDA device exists. Each node declares VPPO_TEST_SLURM_CPUS CPUs (default 8) and 64 GB whatever
# the machine has (config_overrides), so a job sized like a real one can be placed on a small test machine.
# Several nodes need a slurmd built with multiple-slurmd support (`slurmd -N name`, one port each); `start`
# fails with that message when the installed slurmd lacks it.
set -euo pipefail

die() { echo "local_slurm.sh: $*" >&2; exit 2; }

install_slurm() {
  [ "${VPPO_SKIP_SLURM_TESTS:-0}" != 1 ] || return 0   # the Slurm tier is skipped: nothing to install
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${limit}s (logs in $DIR/log)"
}

start() {
  local nodes=${1:-1} cpus=${VPPO_TEST_SLURM_CPUS:-8} host
  [ "$(id -u)" = 0 ] || die "start needs root (slurmd starts job steps as the submitting user)"
  [ ! -e "$DIR/slurm.conf" ] || die "$DIR already holds a cluster (stop it first)"
  host=$(hostname -s)
  mkdir -p "$DIR"/{log,state,munge,spool}
  chmod 711 "$DIR/munge"   # clients need to reach the socket; munged refuses a group/world-writable folder
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munged test -S "$DIR/munge/munge.socket"

  local ctld_port node_lines="" names=()
  ctld_port=$(free_port)
  for i in $(seq 1 "$nodes"); do
    local name=$host port
    [ "$nodes" = 1 ] || name="node$i"
    port=$(free_port)
    names+=("$name")
    node_lines+="NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=64000 Gres=gpu:8 State=UNKNOWN"$'\n'
    mkdir -p "$DIR/spool/$name"
  done
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=vppotest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
# squeue is the executor's status source here (no slurmdbd, so no sacct): keep finished jobs visible.
MinJobAge=3600
MpiDefault=none
PlugStackConfig=$DIR/plugstack.conf
$node_lines
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  : > "$DIR/plugstack.conf"
  # Fake GPUs: empty files stand in for /dev/nvidia0..7 (slurmd counts a GPU gres by its File= entries; a
  # bare Count= registers 0 GPUs and drains the node). task/none binds nothing, so the files are never opened.
  mkdir -p "$DIR/dev"
  for i in 0 1 2 3 4 5 6 7; do : > "$DIR/dev/gpu$i"; done
  echo "Name=gpu File=$DIR/dev/gpu[0-7]" > "$DIR/gres.conf"
  # Client wrappers: Snakemake's jobstep drops every SLURM_* variable (SLURM_CONF included) before its srun, so
  # inside a job the commands would look for /etc/slurm/slurm.conf. First on PATH, these name our file instead.
  mkdir -p "$DIR/bin"
  for tool in sbatch srun salloc squeue scontrol scancel sinfo; do
    printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$DIR/slurm.conf" "$(command -v "$tool")" > "$DIR/bin/$tool"
    chmod +x "$DIR/bin/$tool"
  done
  cat > "$DIR/env.sh" <<ENV
export SLURM_CONF=$DIR/slurm.conf PATH=$DIR/bin:\$PATH
ENV
  export SLURM_CONF="$DIR/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  wait_for 20 slurmctld scontrol ping
  if [ "$nodes" = 1 ]; then
    slurmd -f "$SLURM_CONF"
  else
    for name in "${names[@]}"; do
      slurmd -f "$SLURM_CONF" -N "$name" || die "slurmd -N $name failed: this slurmd has no multiple-slurmd support"
    done
  fi
  for name in "${names[@]}"; do
    wait_for 30 "node $name" bash -c "sinfo -h -n $name -o %t | grep -Eq '^(idle|mix|alloc)'"
  done
  echo "local Slurm up: ${names[*]} (source $DIR/env.sh)"
}

stop_pid_file() {  # stop_pid_file FILE: TERM the daemon whose pid the file holds, wait up to 10 s, then KILL
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  [ -f "$DIR/slurm.conf" ] || return 0
  export SLURM_CONF="$DIR/slurm.conf"
  # Jobs first, and wait until slurmd has ended them (up to 60 s): a slurmd stopped while a job is still being
  # cancelled leaves that job's processes running without a parent.
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 120); do
    [ -z "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
  for file in "$DIR"/slurmd.*.pid; do [ -e "$file" ] && stop_pid_file "$file"; done
  stop_pid_file "$DIR/slurmctld.pid"
  stop_pid_file "$DIR/munge/munged.pid"
  rm -f "$DIR/slurm.conf"
}

command=${1:-}
case "$command" in
  install) install_slurm ;;
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [NODES]"; DIR=$(mkdir -p "$2" && cd "$2" && pwd); start "${3:-1}" ;;
  stop) [ $# -ge 2 ] || die "usage: $0 stop DIR"; DIR=$(cd "$2" 2>/dev/null && pwd) || exit 0; stop ;;
  *) die "usage: $0 install | start DIR [NODES] | stop DIR" ;;
esac
