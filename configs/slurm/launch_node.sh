#!/bin/bash
# One machine's part of a multi-machine job: srun runs it once per machine (configs/slurm/multi_node.sbatch), with
# SLURM_NNODES and SLURM_NODEID set by SLURM and MAIN_PROCESS_IP / GPUS_PER_NODE by the batch script.
set -euo pipefail
exec "${PYTHON:-python}" -m accelerate.commands.launch --config_file configs/accelerate/multi_node.yaml \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "${MAIN_PROCESS_PORT:-29500}" \
    "${TRAIN_SCRIPT:-lora_peft_finetuning.py}" "$@"
