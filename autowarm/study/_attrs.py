"""The names autowarm writes into an optuna study: a contract the report and export read.

Everything is a JSON-able value in the study's or trial's *user* attributes, so any optuna
storage (SQLite, journal file, PostgreSQL) keeps it and ``optuna-dashboard`` shows it.

Study user attributes:

================================  =============================================================
``autowarm.format``               ``"autowarm.study"``
``autowarm.format_version``       ``1``
``autowarm.task``                 the task's identity (``"task.py:task"``, ``"pkg.mod:task"``,
                                  the task's ``name``, or ``make_model``'s qualified name)
``autowarm.model``                the model's fingerprint (:meth:`Task.model_fingerprint`)
``autowarm.seed``                 the study's seed (trial models and data use it)
``autowarm.total_steps``          optimizer steps of the real run
``autowarm.trial_steps``          optimizer steps of one (compressed) trial
``autowarm.n_trials``             the study's target number of trials, or ``None``
``autowarm.confirm``              full-length confirmations the last ``tune`` run planned
``autowarm.versions``             ``{"autowarm": ..., "torch": ..., "optuna": ..., "python": ...}``
``autowarm.base_schedule``        :meth:`ScheduleConfig.to_dict` of the probe's schedule (decay,
                                  floor and shape parameters the trials vary around)
``autowarm.suggestion``           the probe's :meth:`Suggestion.to_dict` plus its evidence tables
                                  as ``"trace"``/``"signals"`` lists of records, or ``None``
``autowarm.search_space``         the search space's ``to_dict()``
``autowarm.warmup_transfer``      how a full-run warmup maps into a trial (``"fraction"``, ...)
``autowarm.pruner``               ``"median"``, ``"hyperband"`` or ``"none"``
``autowarm.accumulation_steps``   batches per optimizer step (:attr:`Task.accumulation_steps`)
``autowarm.precision``            ``"32-true"``, ``"bf16-mixed"`` or ``"16-mixed"``
``autowarm.metric``               what a trial's value is, in words
``autowarm.optimizer``            the optimizer and its settings (:meth:`Task.optimizer_identity`)
``autowarm.param_groups``         one line per parameter group (its parameters, ``lr_scale`` and
                                  settings; :meth:`Task.param_groups_identity`), or ``None``
``autowarm.grad_clip``            the trials' gradient-norm clipping, or ``None``
``autowarm.task_file``            the absolute path of the task file the study started from, or
                                  ``None`` (compared on resume: another path is warned about)
``autowarm.task_code``            16 hex digits of that file's code (comments and blank lines
                                  aside), or ``None`` (compared on resume: an edit is warned
                                  about)
``autowarm.training``             the settings every trial trains under (optimizer and its
                                  settings, clipping, accumulation, precision), as
                                  ``Suggestion.training`` records them: what the exported
                                  TrainingArguments carry
``autowarm.data``                 ``{"train_batches": n, "val_batches": n}`` by ``len()``
                                  (``None`` where the data has no length; :meth:`Task.data_sizes`)
================================  =============================================================

Trial user attributes:

================================  =============================================================
``autowarm.role``                 one of :data:`ROLES`
``autowarm.schedule``             the full-run schedule the trial stands for (``to_dict()``)
``autowarm.trial_schedule``       the compressed schedule the trial trained (``to_dict()``)
``autowarm.peak_lr``              float, as in ``autowarm.schedule``
``autowarm.warmup_steps``         int, full-run warmup, as in ``autowarm.schedule``
``autowarm.reason``               why a trial was pruned or failed (absent when it completed)
``autowarm.worker``               ``"host:pid:start:pidns"`` of the process that ran it
``autowarm.alive``                journal files: the time (``time.time()``) its worker last
                                  said it was alive, every 30 s while it runs
``autowarm.worker_died``          on a trial failed because its worker was gone: how many
                                  runs of its schedule (it and those it re-runs) ended so
``autowarm.given_up``             ``True`` on such a trial not queued again (its worker died
                                  on each of its runs: a segfault, the out-of-memory killer)
``autowarm.retry_of``             the number of the failed trial this one re-runs
``autowarm.also_roles``           the other first-trial roles this trial stands for, whose
                                  schedule is its own (queued once: ``["ten_percent"]`` when
                                  ``2 / (1 - beta2)`` is 10% of the run); absent when none
================================  =============================================================

A trial's value is the final validation loss (lower is better; the study minimises); its
intermediate values are the smoothed validation loss keyed by optimizer step.
"""

from __future__ import annotations

from typing import Final

STUDY_FORMAT: Final = "autowarm.study"
STUDY_FORMAT_VERSION: Final = 1

# study user attributes
FORMAT: Final = "autowarm.format"
FORMAT_VERSION: Final = "autowarm.format_version"
TASK: Final = "autowarm.task"
SEED: Final = "autowarm.seed"
TOTAL_STEPS: Final = "autowarm.total_steps"
TRIAL_STEPS: Final = "autowarm.trial_steps"
N_TRIALS: Final = "autowarm.n_trials"
CONFIRM: Final = "autowarm.confirm"
VERSIONS: Final = "autowarm.versions"
BASE_SCHEDULE: Final = "autowarm.base_schedule"
SUGGESTION: Final = "autowarm.suggestion"
SEARCH_SPACE: Final = "autowarm.search_space"
WARMUP_TRANSFER: Final = "autowarm.warmup_transfer"
PRUNER: Final = "autowarm.pruner"
ACCUMULATION_STEPS: Final = "autowarm.accumulation_steps"
PRECISION: Final = "autowarm.precision"
MODEL: Final = "autowarm.model"
METRIC: Final = "autowarm.metric"
OPTIMIZER: Final = "autowarm.optimizer"
PARAM_GROUPS: Final = "autowarm.param_groups"
GRAD_CLIP: Final = "autowarm.grad_clip"
DATA: Final = "autowarm.data"
TASK_FILE: Final = "autowarm.task_file"
TASK_CODE: Final = "autowarm.task_code"
TRAINING: Final = "autowarm.training"

# trial user attributes
ROLE: Final = "autowarm.role"
SCHEDULE: Final = "autowarm.schedule"
TRIAL_SCHEDULE: Final = "autowarm.trial_schedule"
PEAK_LR: Final = "autowarm.peak_lr"
WARMUP_STEPS: Final = "autowarm.warmup_steps"
REASON: Final = "autowarm.reason"
WORKER: Final = "autowarm.worker"
CONFIRMS: Final = "autowarm.confirms"  # a confirmation run's: the number of the trial it re-runs
ALIVE: Final = "autowarm.alive"
RETRY_OF: Final = "autowarm.retry_of"
WORKER_DIED: Final = "autowarm.worker_died"
GIVEN_UP: Final = "autowarm.given_up"
ALSO_ROLES: Final = "autowarm.also_roles"

ROLE_PROBE: Final = "probe"
"""The probe's estimate, the study's first trial."""
ROLE_NO_WARMUP: Final = "no_warmup"
"""Reference: the probe's peak LR with no warmup."""
ROLE_UNTUNED: Final = "untuned_2_over_1_minus_beta2"
"""Reference: the probe's peak LR with ``2 / (1 - beta2)`` warmup steps (Ma & Yarats)."""
ROLE_TEN_PERCENT: Final = "ten_percent"
"""Reference: the probe's peak LR with 10% of the run as warmup."""
ROLE_SEARCH: Final = "search"
"""A trial proposed by the sampler."""

ROLES: Final = (ROLE_PROBE, ROLE_NO_WARMUP, ROLE_UNTUNED, ROLE_TEN_PERCENT, ROLE_SEARCH)
REFERENCE_ROLES: Final = (ROLE_NO_WARMUP, ROLE_UNTUNED, ROLE_TEN_PERCENT)
