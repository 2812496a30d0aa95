#!/usr/bin/env bash
# An overnight study of examples/overnight/task.py, then the schedule and the morning report.
#
#   bash examples/overnight/run.sh                  # several workers on this host (journal file)
#   STORAGE=postgresql://user@dbhost/autowarm bash examples/overnight/run.sh
#                                                   # the same command on every host, one database
#
# Stop it any time (Ctrl-C or SIGTERM): finished trials are kept, and running the same command
# again resumes the study. N_TRIALS is the study's total, not "this many more". AUTOWARM is the
# command to run (default: autowarm on the PATH; e.g. AUTOWARM="python -m autowarm").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-autowarm-overnight}
mkdir -p "$out"
storage=${STORAGE:-$out/study.log}   # a journal file: safe for several processes on one host
study=${STUDY:-overnight}
read -r -a autowarm <<< "${AUTOWARM:-autowarm}"

"${autowarm[@]}" tune "$here/task.py:task" \
    --storage "$storage" --study-name "$study" \
    --n-trials "${N_TRIALS:-40}" --timeout "${TIMEOUT:-8h}" \
    --workers "${WORKERS:-2}" ${TRIAL_STEPS:+--trial-steps "$TRIAL_STEPS"}

"${autowarm[@]}" export --storage "$storage" --study-name "$study" -o "$out/schedule.yaml"
"${autowarm[@]}" export --storage "$storage" --study-name "$study" --format trainer \
    -o "$out/trainer_args.json"
"${autowarm[@]}" report --storage "$storage" --study-name "$study" -o "$out/report"
echo "schedule: $out/schedule.yaml; report: $out/report/report.html"
