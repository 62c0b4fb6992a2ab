import pytest

from simclr_ad.config import (ConfigError, FinetuneConfig, PretrainConfig, config_from_dict, config_to_dict,
                              parse_config, read_yaml_config)
from tests.conftest import TINY


def test_yaml_then_cli_override():
    cfg = parse_config(PretrainConfig, "pretrain", ["--config", TINY, "--epochs", "7"])
    assert cfg.arch == "resnet18" and cfg.image_size == 32  # top-level keys
    assert cfg.proj_hidden_dim == 64  # pretrain section
    assert cfg.epochs == 7  # CLI beats YAML


def test_sections_apply_to_their_stage_only():
    pre = parse_config(PretrainConfig, "pretrain", ["--config", TINY])
    fin = parse_config(FinetuneConfig, "finetune", ["--config", TINY])
    assert pre.epochs == 2 and fin.epochs == 3
    assert fin.batch_size == 16 and pre.batch_size == 32


def test_defaults_are_the_mission_protocol():
    pre, fin = PretrainConfig(), FinetuneConfig()
    assert (pre.arch, pre.image_size, pre.optimizer, pre.lr, pre.momentum, pre.sam_rho, pre.sam_adaptive,
            pre.temperature, pre.epochs) == ("resnet50", 128, "sam", 1e-2, 0.9, 2.0, True, 0.5, 100)
    assert (fin.lr, fin.weight_decay, fin.epochs, fin.mode) == (1e-4, 1e-8, 100, "finetune")


@pytest.mark.parametrize("text, message", [
    ("epoch: 3\n", "unknown config key 'epoch'"),
    ("pretrain:\n  label_frac: 0.1\n", "unknown config key 'pretrain.label_frac'"),
    ("epochs: three\n", "'epochs' expects int"),
    ("epochs: -1\n", "'epochs' must be >= 0"),
    ("batch_size: 0\n", "'batch_size' must be between"),
    ("finetune:\n  label_frac: 1.5\n", "'label_frac' is 1.5"),
    ("finetune:\n  label_frac: 0.1\n  label_subjects: 5\n", "'label_subjects' replaces label_frac"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_bad_yaml_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_config(FinetuneConfig, "finetune", ["--config", str(path)])


def test_unknown_cli_flag_is_an_error():
    with pytest.raises(ConfigError, match="unrecognized arguments: --epoch"):
        parse_config(PretrainConfig, "pretrain", ["--epoch", "3"])


def test_bool_and_tuple_flags():
    cfg = parse_config(FinetuneConfig, "finetune", ["--no-channels-last", "--fractions", "0.1", "0.5", "--seeds", "3"])
    assert cfg.channels_last is False and cfg.fractions == (0.1, 0.5) and cfg.seeds == (3,)


def test_round_trip_and_newer_format_refused():
    cfg = FinetuneConfig(label_frac=0.2)
    assert config_from_dict(FinetuneConfig, config_to_dict(cfg)) == cfg
    newer = {**config_to_dict(cfg), "format": 99}
    with pytest.raises(ConfigError, match="newer"):
        config_from_dict(FinetuneConfig, newer)


def test_yaml_keys_of_other_stage_are_ignored_not_errors():
    assert "label_frac" not in read_yaml_config(TINY, "pretrain")


def test_positives_must_be_views_or_subject():
    assert PretrainConfig(positives="subject").positives == "subject"
    with pytest.raises(ConfigError, match="'positives' must be views or subject"):
        PretrainConfig(positives="pairs")


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig])
def test_every_flag_says_what_it_does(cls):
    import re

    from simclr_ad.config import build_parser

    for action in build_parser(cls, "").__dict__["_actions"]:
        if action.option_strings and action.dest not in ("help",):
            assert action.help and not re.fullmatch(r"\(default: .*\)", action.help), action.option_strings
    assert "--slices" in build_parser(cls, "").format_help()  # renders (a bare % in a help would raise)


def test_help_comes_from_the_field_comments():
    from simclr_ad.config import field_help

    helps = field_help(FinetuneConfig)
    assert helps["lr"] == "AdamW learning rate" and field_help(PretrainConfig)["lr"].startswith("base learning rate")
    assert helps["aug_gamma"] == field_help(PretrainConfig)["aug_gamma"]  # an override without comment inherits it
    assert helps["lr_schedule"].startswith("plateau: ReduceLROnPlateau")  # the comment block above the field
