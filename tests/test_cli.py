"""The installed console scripts run as ``python -m simclr_ad.<stage>`` does, allocator settings included."""
import configparser
import os
import subprocess
import sys

import pytest

from simclr_ad import cli, runtime
from tests.conftest import ROOT

STAGE = '''
import os
from pathlib import Path

from simclr_ad import runtime


def main():
    print(os.environ.get("GLIBC_TUNABLES", "unset"), flush=True)
    return Path("runs/x")  # as pretrain's main returns its run dir


if __name__ == "__main__":  # exactly our training stages' block
    runtime.reexec_with_tuned_malloc()
    main()
'''
CONSOLE_SCRIPT = '''
import re
import sys

from simclr_ad import cli

if __name__ == "__main__":  # what pip writes for "probe = simclr_ad.cli:..."
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(cli.run_stage("probe_stage", tuned_malloc=True))
'''


def test_console_scripts_are_the_cli_wrappers_with_each_stages_allocator_policy():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = dict(line.replace(" ", "").split("=") for line in lines)
    assert set(scripts) == {f"simclr-ad-{stage}" for stage in cli.TUNED_MALLOC}
    for stage, tuned in cli.TUNED_MALLOC.items():
        assert scripts[f"simclr-ad-{stage}"] == f"simclr_ad.cli:{stage}"
        assert callable(getattr(cli, stage))
        main_block = (ROOT / "simclr_ad" / f"{stage}.py").read_text().split('if __name__ == "__main__":')[1]
        assert ("reexec_with_tuned_malloc()" in main_block) == tuned, stage  # the same as python -m


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_console_script_and_python_m_run_under_the_same_allocator_settings(tmp_path):
    (tmp_path / "probe_stage.py").write_text(STAGE)
    (tmp_path / "probe").write_text(CONSOLE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SIMCLR_AD_NO_REEXEC")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    runs = {how: subprocess.run([sys.executable, *argv], env=env, cwd=tmp_path, capture_output=True, text=True)
            for how, argv in (("python -m", ["-m", "probe_stage"]), ("console script", [str(tmp_path / "probe")]))}
    for how, run in runs.items():
        assert run.returncode == 0, (how, run.stderr)  # a returned run dir is not an exit status
    assert runs["python -m"].stdout == runs["console script"].stdout == runtime.MALLOC_TUNABLES + "\n"


@pytest.mark.parametrize("stage", ["data_cli", "pretrain", "finetune", "baselines", "report", "predict", "bench"])
def test_every_stage_main_speaks_in_one_line(stage):
    """friendly_errors sits on each main (functools.wraps leaves __wrapped__), not on a helper beside it."""
    import importlib

    main = importlib.import_module(f"simclr_ad.{stage}").main
    assert main.__name__ == "main" and hasattr(main, "__wrapped__"), stage
