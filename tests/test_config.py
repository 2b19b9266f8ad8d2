"""Constants become flags: defaults, help, explicit flags, the lr schedule, and what keeps runs apart."""
import pytest

from tests.test_scripts import SCRIPTS, constants
from utils.config import build_parser, check_saved, lr_at, parse
from utils.identity import effective
from utils.methods import METHODS


def test_lr_default_drops_for_the_last_epoch_whatever_the_epochs():
    for epochs in (2, 12, 80):
        cfg, _ = parse("part", constants(SCRIPTS["part"]), ["--epochs", str(epochs), "--warm-up", "1"])
        assert cfg["lr_milestones"] == [epochs]
        assert lr_at(cfg, epochs - 1) == pytest.approx(0.01) and lr_at(cfg, epochs) == pytest.approx(0.001)
    cfg, _ = parse("part", constants(SCRIPTS["part"]), ["--lr-milestones", "60", "70"])
    assert [lr_at(cfg, e) for e in (59, 60, 70)] == [pytest.approx(v) for v in (0.01, 0.001, 0.0001)]


def test_explicit_flags_are_the_ones_on_the_command_line():
    _, explicit = parse("part", constants(SCRIPTS["part"]), ["--epsilon", "8/255", "--no-mask", "--n-eval", "5",
                                                              "--region-eps", "0", "0", "0", "0"])
    assert explicit == {"epsilon", "mask", "n_eval", "region_eps"}


@pytest.mark.parametrize("variant", list(METHODS))
def test_help_shows_budgets_as_fractions_and_every_flag_has_help(variant):
    parser = build_parser(variant, constants(SCRIPTS[variant]))
    text = parser.format_help()
    assert "8/255" in text and "7/255" in text and "0.0313" not in text and "0.0274" not in text
    for action in parser.flags:
        assert action.help and action.help.count("(default") <= 1, action.option_strings


def test_effective_settings_drop_what_a_run_never_used():
    base, _ = parse("part", constants(SCRIPTS["part"]), ["--no-mask"])
    other, _ = parse("part", constants(SCRIPTS["part"]), ["--no-mask", "--low-epsilon", "5/255", "--cam", "layercam",
                                                          "--warm-up", "3", "--seed", "9", "--device", "cpu"])
    assert effective(base) == effective(other)  # AT reads none of the mask settings; seed and device are not settings
    part, _ = parse("part", constants(SCRIPTS["part"]), ["--mask-source", "regions"])
    assert "region_eps" in effective(part) and "cam" not in effective(part) and "low_epsilon" not in effective(part)
    official, _ = parse("part", constants(SCRIPTS["part"]), ["--mask-source", "official"])
    assert {"mask_refresh", "cam"} <= set(effective(official)) and "mask_rule" not in effective(official)
    more_eval, _ = parse("part", constants(SCRIPTS["part"]), ["--n-eval", "100"])
    assert effective(more_eval) != effective(parse("part", constants(SCRIPTS["part"]), [])[0])


def test_regions_runs_are_named_after_their_baseline():
    cfg, _ = parse("part_t", constants(SCRIPTS["part_t"]), ["--mask-source", "regions"])
    assert cfg["method"] == "TRADES"
    cfg, _ = parse("part", constants(SCRIPTS["part"]), ["--attack", "mma"])
    assert cfg["method"] == "PART-MMA"


def test_default_run_folder_names_the_method():
    outs = {parse("part", constants(SCRIPTS["part"]), argv)[0]["out"] for argv in ([], ["--no-mask"], ["--attack", "mma"])}
    assert outs == {"runs/part-cifar10-resnet18-seed1", "runs/at-cifar10-resnet18-seed1",
                    "runs/part-mma-cifar10-resnet18-seed1"}


@pytest.mark.parametrize("variant,argv", [
    ("part", []),
    ("part", ["--no-mask", "--width", "16", "--lr-milestones", "60", "70", "--cam-layer", "layer3"]),
    ("part", ["--mask-source", "regions", "--region-eps", "6/255", "12/255", "12/255", "12/255", "--warm-up", "0"]),
    ("part", ["--attack", "mma", "--eval-attacks", "natural", "pgd50", "--eval-corruptions", "c10c", "--amp", "bf16"]),
    ("part_t", ["--as-published"]),
    ("part_m", ["--data", "svhn", "--model", "wrn34-10", "--weight-decay", "none", "--step-size", "none"]),
])
def test_a_parsed_config_read_back_is_accepted_unchanged(variant, argv):
    """check_saved accepts every config the flags can make, and resolving it again changes nothing."""
    cfg, _ = parse(variant, constants(SCRIPTS[variant]), argv)
    cfg.update(num_classes=10, image_size=32, data_fingerprint="0123", world_size=1)  # what training adds
    assert check_saved(dict(cfg), "ckpt") == cfg
