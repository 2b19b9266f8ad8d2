"""As published: --official-starts, --official-trades-forward, --as-published and aa-official.

The official_* functions below are transcriptions of the official code (tmlr-group/PART: craft_ae.part_pgd,
craft_ae.part_mma, loss/part_trades.py, loss/part_mart.py; their scalar-budget forms follow torchattacks' PGD and
the TRADES / MART repositories), written for these tests. They take the start noise as an argument, so the draws
the project's attack makes (recorded from torch.rand_like / torch.randn_like) can be replayed into them.
"""
import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import build_model
from tests.test_scripts import SCRIPTS, constants, run
from utils.config import parse, upgrade
from utils.entry import main
from utils.identity import effective, training_differences
from utils.methods import METHODS

EPS, LOW, STEP, STEPS = 8 / 255, 7 / 255, 2 / 255, 3


# ----------------------------------------------------------------------------------------------------
# the transcriptions
# ----------------------------------------------------------------------------------------------------
def clamp_to(eta, eps):
    """The official element_wise_clamp (a float budget is the scalar TRADES / MART / torchattacks clamp)."""
    eps = torch.as_tensor(eps, dtype=eta.dtype).expand_as(eta)
    eta = torch.where(eta > eps, eps, eta)
    return torch.where(eta < -eps, -eps, eta)


def scalar_projection(x_adv, x, eps):
    """TRADES, MART and the official mma under a float budget: min(max(x_adv, x - eps), x + eps), then [0, 1]."""
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def official_uniform(x, u, epsilon):
    """FloatTensor(*shape).uniform_(-epsilon, epsilon) given the [0, 1) draws u."""
    return x + (-epsilon + u * (2 * epsilon))


def official_pgd(model, x, y, budget, epsilon, u):
    """part_pgd (per-pixel budget: the start is not clipped); torchattacks' PGD for a float budget (clipped)."""
    model.eval()
    x_adv = official_uniform(x, u, epsilon)
    if isinstance(budget, float):
        x_adv = torch.clamp(x_adv, 0, 1)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = nn.CrossEntropyLoss()(model(x_adv), y)
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + STEP * grad.sign()
        x_adv = torch.clamp(x + clamp_to(x_adv - x, budget), 0, 1)  # torchattacks: the same clamp of the delta
    return x_adv.detach()


def official_mma(model, x, y, budget, epsilon, u, k=3, num_classes=10):
    """part_mma: shared clipped uniform start at the scalar epsilon, k targeted runs, the largest margin kept."""
    model.eval()
    start = torch.clamp(official_uniform(x, u, epsilon), 0.0, 1.0)
    logits = model(x)
    onehot = F.one_hot(y, num_classes).float()
    index = torch.argsort(logits - 10000 * onehot)[:, num_classes - k:]
    rows = torch.arange(len(y))
    candidates, scores = [], []
    for i in range(k):
        t = index[:, i]
        x_adv = start.clone()
        for _ in range(STEPS):
            x_adv.requires_grad_()
            out = model(x_adv)
            loss = -torch.clamp(out[rows, y] - out[rows, t] + 50, min=0.).sum()
            grad, = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + STEP * grad.sign()
            x_adv = scalar_projection(x_adv, x, budget) if isinstance(budget, float) else \
                torch.clamp(x + clamp_to(x_adv - x, budget), 0.0, 1.0)
        with torch.no_grad():
            out = model(x_adv)
        scores.append((out[rows, t] - out[rows, y])[:, None])
        candidates.append(x_adv.detach())
    choose = torch.argsort(torch.cat(scores, 1))[:, -1]
    return torch.stack([candidates[int(choose[i])][i] for i in range(len(y))])


def official_gaussian_loop(model, x, budget, n, inner_loss):
    """The inner loop the official TRADES and MART code share: from x + 0.001 * N (not projected), steps on the
    sign of the gradient of inner_loss(model(x_adv)); in eval mode, then the model back in train mode."""
    model.eval()
    x_adv = x.detach() + 0.001 * n
    for _ in range(STEPS):
        x_adv.requires_grad_()
        grad = torch.autograd.grad(inner_loss(model(x_adv)), [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = scalar_projection(x_adv, x, budget) if isinstance(budget, float) else \
            torch.clamp(x + clamp_to(x_adv - x, budget), 0, 1.0)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def official_trades(model, x, y, budget, n, beta=6.0):
    """part_trades_loss (trades_loss for a float budget): returns (x_adv, loss); the model is in train mode after."""
    kl = nn.KLDivLoss(reduction="sum")
    x_adv = official_gaussian_loop(model, x, budget, n,
                                   lambda z: kl(F.log_softmax(z, dim=1), F.softmax(model(x), dim=1)))
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    return x_adv, loss_natural + beta * loss_robust


def official_mart(model, x, y, budget, n, beta=6.0):
    """part_mart_loss (mart_loss for a float budget): returns (x_adv, loss)."""
    kl = nn.KLDivLoss(reduction="none")
    x_adv = official_gaussian_loop(model, x, budget, n, lambda z: F.cross_entropy(z, y))
    logits = model(x)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1).long()).squeeze()
    loss_robust = (1.0 / len(x)) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return x_adv, loss_adv + float(beta) * loss_robust


# ----------------------------------------------------------------------------------------------------
# set-up: a tiny seeded model, images with pixels at exactly 0 and 1, per-pixel budgets, recorded draws
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def setting():
    torch.manual_seed(5)
    model = build_model("resnet18", 10, width=2)
    with torch.no_grad():  # BatchNorm statistics that differ from the defaults, so the model's mode matters
        model.train()
        model(torch.rand(16, 3, 8, 8))
    x = torch.rand(6, 3, 8, 8)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 10, (6,))
    budget = torch.where(torch.rand(x.shape) > 0.5, torch.tensor(EPS), torch.tensor(LOW))
    return model, x, y, budget


def config(variant, *flags):
    cfg, _ = parse(variant, constants(SCRIPTS[variant]), ["--num-steps", str(STEPS), "--step-size", "2/255", *flags])
    return cfg


def recorded(monkeypatch, name):
    """Wrap torch.<name> (rand_like / randn_like) so every draw is kept; returns the list of draws."""
    draws, original = [], getattr(torch, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        draws.append(out.clone())
        return out
    monkeypatch.setattr(torch, name, wrapper)
    return draws


BUDGETS = ["per-pixel", "float"]


@pytest.mark.parametrize("kind", BUDGETS)
@pytest.mark.parametrize("attack", ["pgd", "mma"])
def test_official_starts_pgd_mma_equal_the_transcription(attack, kind, setting, monkeypatch):
    model, x, y, budget = setting
    budget = EPS if kind == "float" else budget
    cfg = config("part", "--official-starts", "--attack", attack)
    draws = recorded(monkeypatch, "rand_like")
    transcription = official_pgd if attack == "pgd" else official_mma
    ours = METHODS["part"].attack(model, x, y, budget, cfg)
    assert len(draws) == 1
    assert (ours - transcription(copy.deepcopy(model), x, y, budget, EPS, draws[0])).abs().max() <= 1e-6
    if kind == "per-pixel":  # our own start (within each pixel's budget), fed the same draw, lands elsewhere
        draws.clear()
        default = METHODS["part"].attack(model, x, y, budget, config("part", "--attack", attack))
        assert (default - transcription(copy.deepcopy(model), x, y, budget, EPS, draws[0])).abs().max() > 1e-3


@pytest.mark.parametrize("kind", BUDGETS)
@pytest.mark.parametrize("variant", ["part_t", "part_m"])
def test_official_starts_trades_mart_equal_the_transcription(variant, kind, setting, monkeypatch):
    model, x, y, budget = setting
    budget = EPS if kind == "float" else budget
    cfg = config(variant, "--official-starts", *(["--official-trades-forward"] if variant == "part_t" else []))
    draws = recorded(monkeypatch, "randn_like")
    ours = copy.deepcopy(model)
    x_adv = METHODS[variant].attack(ours, x, y, budget, cfg)
    ours.train()
    loss = METHODS[variant].loss(ours, x, x_adv, y, cfg)
    theirs = copy.deepcopy(model)
    x_off, loss_off = (official_trades if variant == "part_t" else official_mart)(theirs, x, y, budget, draws[0])
    assert len(draws) == 1
    assert (x_adv - x_off).abs().max() <= 1e-6
    assert abs(loss.item() - loss_off.item()) <= 1e-6
    # the official TRADES forward leaves BatchNorm's running statistics as the official code does
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_official_trades_forward_changes_only_batchnorm_statistics(setting):
    model, x, y, budget = setting
    x_adv = METHODS["part_t"].attack(model, x, y, budget, config("part_t"))
    out = {}
    for flag in (False, True):
        m = copy.deepcopy(model).train()
        cfg = config("part_t", *(["--official-trades-forward"] if flag else []))
        loss = METHODS["part_t"].loss(m, x, x_adv, y, cfg)
        loss.backward()
        out[flag] = (loss.detach(), [p.grad.clone() for p in m.parameters()], m.bn1.running_mean.clone(),
                     m.bn1.num_batches_tracked.item())
    assert torch.allclose(out[False][0], out[True][0], atol=1e-6)
    for a, b in zip(out[False][1], out[True][1]):  # equal up to float rounding
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-6  # summation order differs with the threads
    before = model.bn1.num_batches_tracked.item()
    assert (out[False][3] - before, out[True][3] - before) == (2, 3)  # natural, adversarial (, natural again)
    assert not torch.allclose(out[False][2], out[True][2])


# ----------------------------------------------------------------------------------------------------
# the config: defaults, old configs, resume, grouping, the preset, bad combinations
# ----------------------------------------------------------------------------------------------------
def test_defaults_old_configs_and_training_setting():
    cfg = config("part_t")
    assert (cfg["official_starts"], cfg["official_trades_forward"], cfg["as_published"]) == (False, False, False)
    old = {k: v for k, v in cfg.items() if k not in ("official_starts", "official_trades_forward", "as_published")}
    assert upgrade(old)["official_starts"] is False and effective(upgrade(old)) == effective(cfg)
    new = config("part_t", "--official-starts")
    assert training_differences(cfg, new, 1) == ["official_starts: False -> True"]
    assert effective(cfg) != effective(new)  # the report never averages the two
    assert "official_trades_forward" in effective(cfg) and "official_trades_forward" not in effective(config("part"))


def test_resume_refuses_a_checkpoint_trained_without_official_starts(tmp_path, capsys):
    out = tmp_path / "r"
    assert run("part_m", out, "--epochs", "1", "--warm-up", "0", "--eval-attacks", "natural") == 0
    capsys.readouterr()
    assert run("part_m", out, "--epochs", "2", "--warm-up", "0", "--resume", "--official-starts") == 2
    err = capsys.readouterr().err.strip()
    assert "official_starts: False -> True" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("variant", list(METHODS))
def test_as_published_sets_and_records_the_official_settings(variant):
    cfg, explicit = parse(variant, constants(SCRIPTS[variant]), ["--as-published", "--n-eval", "10"])
    trades = METHODS[variant].trades_forward
    assert (cfg["mask_source"], cfg["official_starts"], cfg["official_trades_forward"]) == ("official", True, trades)
    default, _ = parse(variant, constants(SCRIPTS[variant]), [])
    assert cfg["eval_attacks"] == default["eval_attacks"] + ["aa-official"] and "eval_attacks" in explicit
    published = {"mask_source": "official", "official_starts": True, "eval_attacks": cfg["eval_attacks"]}
    assert cfg["as_published"] == {**published, **({"official_trades_forward": True} if trades else {})}
    plain, _ = parse(variant, constants(SCRIPTS[variant]), ["--mask-source", "official", "--official-starts",
                                                            "--n-eval", "10", "--eval-attacks", *cfg["eval_attacks"],
                                                            *(["--official-trades-forward"] if trades else [])])
    assert effective(plain) == effective(cfg) and not training_differences(cfg, plain, 1)


@pytest.mark.parametrize("variant", list(METHODS))
def test_as_published_takes_an_explicit_evaluation_as_given(variant):
    """A study evaluates its as-published rows like the others: an explicit --eval-attacks gains no aa-official."""
    cfg, _ = parse(variant, constants(SCRIPTS[variant]), ["--as-published", "--eval-attacks", "natural", "pgd20"])
    assert cfg["eval_attacks"] == ["natural", "pgd20"] and cfg["mask_source"] == "official"
    assert "eval_attacks" not in cfg["as_published"] and cfg["as_published"]["official_starts"] is True


@pytest.mark.parametrize("argv, words", [
    (["--as-published", "--mask-source", "cam"], "contradicts --mask-source cam"),
    (["--official-trades-forward"], "applies to TRADES only"),
])
def test_contradictions_exit_2_with_one_line(argv, words, tmp_path, capsys):
    assert run("part", tmp_path / "r", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_aa_official_without_torchattacks_exits_2_with_the_install_line(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchattacks" else real(name, *a))
    assert run("part", tmp_path / "r", "--eval-attacks", "natural", "aa-official") == 2
    err = capsys.readouterr().err.strip()
    assert "pip install torchattacks==3.4.0" in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_grid_as_published_pairs_every_row_with_its_published_twin():
    from tools.studies import DEFAULT_ROWS, STUDIES
    rows = STUDIES["as-published"]
    ours = [r for r in rows if not r.endswith("-as-published")]
    assert ours and len(rows) == 2 * len(ours)
    for r in ours:
        script, flags = rows[r]
        assert rows[f"{r}-as-published"] == (script, flags + ["--as-published"])
    assert set(DEFAULT_ROWS["as-published"]) <= set(rows)


# ----------------------------------------------------------------------------------------------------
# aa-official end to end
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchattacks") is None, reason="torchattacks is not installed")
def test_aa_official_end_to_end(tmp_path):
    out = tmp_path / "r"
    assert run("part", out, "--as-published", "--eval-attacks", "natural", "pgd20", "aa-official", "--n-eval", "8",
               "--n-eval-aa", "6", "--seed", "4") == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["config"]["eval_attacks"] == ["natural", "pgd20", "aa-official"]
    assert rec["config"]["as_published"]["official_starts"] is True  # the explicit evaluation is taken as given
    assert json.loads((out / "config.json").read_text())["as_published"] == rec["config"]["as_published"]
    assert rec["aa"] is None and isinstance(rec["aa-official"], float) and rec["n_eval_aa"] == 6
    assert rec["aa_official_seed"] == 4 and rec["versions"]["torchattacks"]
    hits = np.load(out / "per_image.npz")
    assert len(hits["aa-official"]) == 6 and not (hits["aa-official"] & ~hits["natural"][:6]).any()
    first = rec["aa-official"]
    assert main("part", constants(SCRIPTS["part"]), ["--eval-only", str(out / "last.pt"), "--n-eval-aa", "6"]) == 0
    assert json.loads((out / "eval_last.json").read_text())["aa-official"] == first  # the seed is fixed


def test_report_pairs_published_rows_and_shows_aa_official_after_aa(tmp_path, capsys):
    """AT trained --as-published is AT (its official start is its own under a scalar budget): one configuration,
    the baseline of both PART rows; the newer run of a seed is kept, here the one with the official AutoAttack."""
    import os
    from tools import report
    for i, (name, argv, acc) in enumerate([("AT", ["--no-mask"], 40.0),
                                           ("AT-as-published", ["--no-mask", "--as-published"], 40.0),
                                           ("PART", [], 44.0), ("PART-as-published", ["--as-published"], 47.0)]):
        cfg = config("part", "--data", "synthetic", *argv)
        rec = {"method": cfg["method"], "seed": 1, "natural": 80.0, "pgd20": acc, "mma": acc, "aa": acc, "n_eval": 500,
               "n_eval_aa": 500, "config": cfg, **({"aa-official": acc + 1} if cfg["as_published"] else {})}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(rec))
        os.utime(tmp_path / name / "results.json", (1e9 + i, 1e9 + i))
    assert report.main([str(tmp_path)]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert next(line for line in lines if line.startswith("| Method |")).startswith(
        "| Method | Natural | PGD-20 | MMA | AA | AA (official) |")
    assert "two runs of one configuration with seed 1" in cap.err and "AT-as-published" in cap.err
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| AT |")] == ["AT"]
    published = {line.split("|")[2].strip(): line for line in lines
                 if line.startswith("| PART (mask_source=official, official_starts=True) − AT |")}
    assert "+7.00" in published["PGD-20"] and "+7.00" in published["AA (official)"]  # 48 - 41


def test_official_starts_of_unmasked_at_is_no_setting_of_the_run():
    """--official-starts changes PGD / MMA only under a per-pixel budget: an unmasked train_eval_part.py run's
    configuration is the same without it (TRADES and MART start otherwise even unmasked: theirs keeps it)."""
    for attack in ("pgd", "mma"):
        plain = config("part", "--no-mask", "--attack", attack)
        assert effective(config("part", "--no-mask", "--attack", attack, "--official-starts")) == effective(plain)
        masked = config("part", "--attack", attack)
        assert effective(config("part", "--attack", attack, "--official-starts")) != effective(masked)
    for variant in ("part_t", "part_m"):
        assert effective(config(variant, "--no-mask", "--official-starts")) != effective(config(variant, "--no-mask"))


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["pgd", "mma"])
def test_unmasked_at_trains_bit_for_bit_alike_with_official_starts(attack, tmp_path):
    """What lets the report take AT --official-starts for AT: the same weights, bit for bit."""
    from tests.test_scripts import same_weights, weights
    argv = ["--no-mask", "--attack", attack, "--epochs", "2", "--warm-up", "0", "--eval-attacks", "natural"]
    assert run("part", tmp_path / "ours", *argv) == 0
    assert run("part", tmp_path / "official", *argv, "--official-starts") == 0
    assert same_weights(weights(tmp_path / "ours" / "last.pt"), weights(tmp_path / "official" / "last.pt"))
