#!/usr/bin/env bash
# The device checks, in one go, on a machine with a GPU and the project's checkout as the
# working directory. Optuna and its database stack travel as wheels in .whl/ (the GPU image has
# torch, transformers, pandas, scipy, matplotlib, tqdm and pytest-xdist already):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 SQLAlchemy==2.1.9
# Results go to $OUT (default reports/gpu/out): the CUDA-only tests, suggest() on CUDA models
# (check_suggest.py), the monitor's overhead on the GPU, a study (tune, export, report) whose
# trials train on the GPU, and last (the longest, so a time limit cuts it first) the whole
# suite with a GPU visible. SECTIONS picks some of them:
#   SECTIONS="tests suggest overhead suite tune" (the default: all).
set -u
sections=" ${SECTIONS:-tests suggest overhead suite tune} "
want() { [[ $sections == *" $1 "* ]]; }
out=${OUT:-reports/gpu/out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi -L
  python3 -c 'import sys, torch, numpy, pandas, optuna, transformers
print(sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__,
      "pandas", pandas.__version__, "optuna", optuna.__version__,
      "transformers", transformers.__version__)'
  nproc
} 2>&1 | tee "$out/env.txt"
want tests && echo "== CUDA tests" && timeout 200 python3 -m pytest -q -p no:cacheprovider -n 6 --dist loadfile -rs \
  tests/test_precision.py tests/test_train.py tests/probe/test_state.py \
  tests/probe/test_moments.py tests/bench/test_overhead.py tests/study/test_tune.py 2>&1 | tee "$out/cuda_tests.txt" | tail -20
want suggest && echo "== suggest() on CUDA" && timeout 180 python3 reports/gpu/check_suggest.py 2>&1 | tee "$out/check_suggest.md"
want overhead && echo "== overhead on the GPU" && timeout 150 python3 -m autowarm bench overhead --device cuda --sizes 1e6,1e7,1e8 --out "$out" \
  2>&1 | tee "$out/overhead.md"
if want tune; then
  echo "== a study on the GPU: tune (2 spawned workers), export, report"
  for prec in 32-true bf16-mixed; do
    log="/tmp/study-$prec.log"
    AUTOWARM_EXAMPLE_TINY=1 CHECK_PRECISION=$prec timeout 150 python3 -m autowarm tune \
      reports/gpu/tune_task.py:task --workers 2 --n-trials 8 --storage "$log" \
      --study-name gpu --no-progress 2>&1 | tail -4
    python3 -m autowarm export --storage "$log" --study-name gpu -o "$out/schedule-$prec.yaml"
    python3 -m autowarm report --storage "$log" --study-name gpu -o "/tmp/report-$prec" \
      >/dev/null && echo "report: $(ls /tmp/report-$prec | tr '\n' ' ')"
    python3 -c 'import sys, collections, optuna
s = optuna.load_study(study_name="gpu", storage=optuna.storages.JournalStorage(
    optuna.storages.journal.JournalFileBackend(sys.argv[1])))
print(sys.argv[2], dict(collections.Counter(t.state.name for t in s.trials)),
      "reasons:", {t.user_attrs.get("autowarm.reason") for t in s.trials} - {None})' \
      "$log" "$prec"
    cp "$log" "$out/"
  done 2>&1 | tee "$out/tune.txt"
fi
want suite && echo "== whole suite, GPU visible" && timeout 300 python3 -m pytest -q -p no:cacheprovider -n 14 --dist loadfile -rs tests 2>&1 \
  | tee "$out/full_suite.txt" | tail -40
