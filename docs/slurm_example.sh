#!/bin/bash
# Written by submitit's own sbatch writer for the main table (3 data sets x 2 models x 6 rows x 3 seeds = 108
# runs), each run on 2 nodes of 4 GPUs, printed (a dry run, no Slurm needed) by
#   python -m tools.grid --study main --data cifar10 svhn tinyimagenet --models resnet18 wrn34-10 --seeds 1 2 3 --executor slurm --slurm-partition gpu --slurm-nodes 2 --slurm-gpus-per-node 4 --slurm-cpus-per-task 8 --slurm-mem-gb 256 --slurm-time 1440
# run from the repository; this machine's paths are replaced by /path/to/part. --run submits it with sbatch.

# Parameters
#SBATCH --array=0-107%108
#SBATCH --cpus-per-task=8
#SBATCH --error=/path/to/part/runs/main/submitit/%A_%a/%A_%a_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=part-main
#SBATCH --mem=256GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/path/to/part/runs/main/submitit/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=1440
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /path/to/part/runs/main/submitit/%A_%a/%A_%a_%t_log.out --error /path/to/part/runs/main/submitit/%A_%a/%A_%a_%t_log.err env PYTHONPATH=/path/to/part /path/to/part/.venv/bin/python -u -m submitit.core._submit /path/to/part/runs/main/submitit/%j

