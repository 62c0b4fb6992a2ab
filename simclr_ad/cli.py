"""The installed console scripts, run exactly as ``python -m simclr_ad.<stage>`` runs.

A console script imports its function and calls it, skipping the module's ``__main__``
block, where the training stages re-execute under ``runtime.MALLOC_TUNABLES`` (15-30 %
faster steps). Each function here does what that block does, then calls the stage's
``main()``; an int it returns is the exit code (predict), anything else (a run dir) is not.
"""
from __future__ import annotations

import importlib

from simclr_ad import runtime

# stage -> whether its ``python -m`` run re-executes under the tuned allocator
TUNED_MALLOC = {"data": False, "pretrain": True, "finetune": True, "baselines": True, "report": False,
                "predict": False, "bench": True}


def run_stage(module: str, tuned_malloc: bool) -> int | None:
    """Re-execute under the tuned allocator if asked (once; see runtime), then run ``module.main()``."""
    if tuned_malloc:
        runtime.reexec_with_tuned_malloc()
    result = importlib.import_module(module).main()
    return result if type(result) is int else None


def data() -> int | None:
    return run_stage("simclr_ad.data_cli", TUNED_MALLOC["data"])


def pretrain() -> int | None:
    return run_stage("simclr_ad.pretrain", TUNED_MALLOC["pretrain"])


def finetune() -> int | None:
    return run_stage("simclr_ad.finetune", TUNED_MALLOC["finetune"])


def baselines() -> int | None:
    return run_stage("simclr_ad.baselines", TUNED_MALLOC["baselines"])


def report() -> int | None:
    return run_stage("simclr_ad.report", TUNED_MALLOC["report"])


def predict() -> int | None:
    return run_stage("simclr_ad.predict", TUNED_MALLOC["predict"])


def bench() -> int | None:
    return run_stage("simclr_ad.bench", TUNED_MALLOC["bench"])
