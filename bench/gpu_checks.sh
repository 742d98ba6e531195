#!/usr/bin/env bash
# Every GPU check in one script, for a CUDA machine (run from the project root):
#   CIFAR=/path/to/cifar10 bash bench/gpu_checks.sh 2>&1 | tee gpu_checks.log
# 1. the tests marked `gpu` (graph vs eager, bf16 vs fp32 over 100 steps, packed state on CUDA);
# 2. one trial: naive eager vs ours (fp32, bf16, CUDA graph) at batch 128, full width;
# 3. ten trials: ten naive processes vs ten packed trials (eager, and graph + bf16), peak memory;
# 4. with several GPUs (nvidia-smi -L): data-parallel scaling, one worker per GPU (bench.ddp: NCCL,
#    1, 2, … up to every GPU, full width) and the communication share of a step;
# 5. with CIFAR set: 10 full-width CIFAR-10 epochs through the trainer (graph + bf16), timed, to
#    project the 200-epoch wall time (20 × the measured time, said as a projection).
set -uo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python -m pytest -q -m gpu tests/test_gpu.py
python -m bench.train_speed --device cuda --width 1 --batch-size 128 --steps 200 --graph
python -m bench.concurrent --device cuda --trials 10 --width 1 --batch-size 128 --steps 100
python -m bench.concurrent --device cuda --trials 10 --width 1 --batch-size 128 --steps 100 --graph --bf16
GPUS=$(nvidia-smi -L | wc -l)
if [ "$GPUS" -gt 1 ]; then
    COUNTS=$(python -c "n=$GPUS; print(','.join(str(k) for k in (1, 2, 4, 8, 16) if k < n) + f',{n}')")
    python -m bench.ddp --device cuda --workers "$COUNTS" --width 1 --batch-size 128 --steps 200
    python -m bench.ddp --device cuda --workers "$COUNTS" --width 0.5 --batch-size 128 --steps 200
else
    echo "one GPU: the multi-GPU data-parallel check (bench.ddp) needs several"
fi
if [ -n "${CIFAR:-}" ]; then
    rm -rf /tmp/colorsweep-gpu-final
    time python -m trainable.train --set data.dataset=cifar10 --set "data.path=$CIFAR" --set train.epochs=10 \
        --set train.batch_size=128 --set train.cuda_graph=on --set train.precision=bf16 \
        --checkpoints-path /tmp/colorsweep-gpu-final --no-progress
fi
