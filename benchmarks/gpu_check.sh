#!/usr/bin/env bash
# Everything a CUDA GPU adds, in one run on a machine with one (its own python3 with torch,
# transformers, torch_geometric and triton; optuna for step 2). OUT (default out/gpu) gets eight
# files at most (the device tool brings back eight): summary.txt, a log per step, and data.tar.gz
# (the dataset rows, autotune's plans and reports). Add the rows to datasets/data, then score them:
# python benchmarks/gpu_holdout.py report  (reports/h100-holdout.md)
#   1. benchmarks/gpu_holdout.py measure: whole-model times for NeuSight's workloads and the zoo's
#   2. autotune --measure on this GPU: bert-base and gpt2, each plan run for real against eager
#      and whole-model inductor
#   3. the tests that skip without a GPU (Triton kernels compiled, CUDA measurement, verify on CUDA)
#   4. costmodel collect on cuda: kernel rows (library, Triton tiles, inductor fusions)
#   5. benchmarks/plans_gpu.py on scGPT at 1200 genes, 75% queries, fp16: eager, sdpa,
#      FlexAttention, torch.compile (default and max-autotune) and our plan, one table (the
#      whole table: python benchmarks/plans_gpu.py --out reports/plans-gpu.md)
# Each step has its own time limit (under 11 minutes in all), so one that hangs leaves the others
# their time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
PY=${PYTHON:-python3}
DATA="$WORK/data"
TARGET=$($PY -c "from costmodel.measure import runner; print(runner('cuda').hardware)") || exit 1
echo "GPU here: $TARGET"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/summary.txt"
$PY -c "import torch, transformers, triton, torch_geometric as g; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'triton', triton.__version__, \
'torch_geometric', g.__version__)" | tee -a "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, say how it ended
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

step holdout 100 $PY benchmarks/gpu_holdout.py measure --out "$DATA"
step autotune 70 $PY -m autotune.cli --target "$TARGET" --model bert-base --batch 8 --seq 512 \
    --trials 300 --measure --repeats 20 --dataset "$DATA" --out "$WORK/autotune" --quiet
step autotune-gpt2 70 $PY -m autotune.cli --target "$TARGET" --model gpt2 --batch 8 --seq 1024 \
    --trials 300 --measure --repeats 10 --dataset "$DATA" --out "$WORK/autotune-gpt2" --quiet
step tests 90 $PY -m pytest -q -p no:cacheprovider -rs \
    tests/costmodel/kernels tests/costmodel/measure/test_measure.py tests/autotune/test_verify.py \
    tests/autotune/test_search.py -k "gpu or cuda or Cuda or needs_the_target or not_tensors"
step collect 150 $PY -m costmodel.cli collect --target cuda --models bert-base,gpt2,scgpt \
    --batches 8 --seqs 512 --budget 110 --root "$DATA"
step plans 180 $PY benchmarks/plans_gpu.py --models scgpt --sizes 4x1200 --dtypes fp16 \
    --trials 200 --repeats 10 --out "$WORK/plans-gpu.md"
rm -f "$WORK"/autotune*/study.journal
tar -czf "$OUT/data.tar.gz" -C "$WORK" .
echo "done"
