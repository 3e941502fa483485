#!/bin/sh
# A one-node Slurm cluster from Debian's packages, for gpuslice's `slurm` tests and by hand:
#
#   sudo scripts/slurm-cluster.sh start [--dir /tmp/gpuslice-slurm] [--gpus 4] [--mps 100] [--json]
#   export SLURM_CONF=/tmp/gpuslice-slurm/etc/slurm.conf   # as `start` prints
#   sbatch --wrap hostname; squeue; sinfo
#   sudo scripts/slurm-cluster.sh stop [--dir ...]          # cancels jobs, stops daemons, removes the dir
#   scripts/slurm-cluster.sh status [--dir ...] [--json]
#
# Needs root (apt-get install of slurmctld slurmd slurm-client munge when missing; slurmd runs
# jobs as their users). The work is done by tests/slurm/cluster.py (standard library only).
exec python3 "$(dirname "$0")/../tests/slurm/cluster.py" "$@"
