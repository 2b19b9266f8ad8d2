import json

import numpy as np
import pytest
import torch

from attacks import autoattack, cw, mart_attack, mma, pgd, trades_attack
from models import build_model
from utils.batches import to_float
from utils.evaluate import evaluate, markdown_table
from utils.methods import mart_loss, trades_loss

EPS, LOW = 8 / 255, 7 / 255
ATTACKS = {
    "pgd": lambda m, x, y, e, steps=3: pgd(m, x, y, e, 2 / 255, steps),
    "mma": lambda m, x, y, e, steps=3: mma(m, x, y, e, 2 / 255, steps, k=3),
    "trades": lambda m, x, y, e, steps=3: trades_attack(m, x, y, e, 2 / 255, steps),
    "mart": lambda m, x, y, e, steps=3: mart_attack(m, x, y, e, 2 / 255, steps),
    "cw": lambda m, x, y, e, steps=3: cw(m, x, y, e, 2 / 255, steps),
}


@pytest.fixture(scope="module")
def batch(synth):
    return to_float(synth.x_test[:24]), synth.y_test[:24]


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return build_model("resnet18", 10, width=4)


def budgets(x):
    g = torch.Generator().manual_seed(1)
    return {
        "float": EPS,
        "two-level": torch.where(torch.rand(x.shape, generator=g) > 0.7, EPS, LOW),
        "per-pixel": torch.where(torch.rand((x.shape[0], 1, *x.shape[2:]), generator=g) > 0.5, EPS, LOW),
        "random": torch.rand(x.shape, generator=g) * EPS,
    }


@pytest.mark.parametrize("name", ATTACKS)
def test_within_budget_and_image_range(name, trained, batch):
    model, _ = trained
    x, y = batch
    for label, eps in budgets(x).items():
        xa = ATTACKS[name](model, x, y, eps)
        bound = torch.as_tensor(eps).expand_as(x)
        assert xa.shape == x.shape
        assert ((xa - x).abs() <= bound + 1e-6).all(), (name, label)
        assert xa.min() >= 0 and xa.max() <= 1, (name, label)
        assert (xa - x).abs().max() > 0.5 / 255, (name, label)  # it moved


@pytest.mark.parametrize("name", ATTACKS)
def test_tensor_budget_equal_everywhere_matches_float(name, trained, batch):
    model, _ = trained
    x, y = batch
    torch.manual_seed(5)
    a = ATTACKS[name](model, x, y, EPS)
    torch.manual_seed(5)
    b = ATTACKS[name](model, x, y, torch.full_like(x, EPS))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ATTACKS)
def test_zero_budget_returns_input(name, trained, batch):
    model, _ = trained
    x, y = batch
    assert torch.equal(ATTACKS[name](model, x, y, 0.0), x)


@pytest.mark.parametrize("name", ATTACKS)
def test_model_state_untouched(name, small_model, batch):
    x, y = batch
    m = small_model.train()
    for p in m.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ATTACKS[name](m, x, y, EPS)
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) and p.requires_grad for p in m.parameters())
    m.eval()
    ATTACKS[name](m, x, y, EPS)
    assert not m.training


def test_attacks_break_a_non_robust_model(trained, synth):
    model, acc = trained
    x, y = to_float(synth.x_test), synth.y_test
    with torch.no_grad():
        nat = (model(x).argmax(1) == y).float().mean().item()
    torch.manual_seed(0)
    rob_pgd = (model(pgd(model, x, y, EPS, 2 / 255, 10)).argmax(1) == y).float().mean().item()
    rob_mma = (model(mma(model, x, y, EPS, 2 / 255, 10)).argmax(1) == y).float().mean().item()
    assert nat > 0.8
    assert rob_pgd < 0.1 and rob_mma < 0.1, (nat, rob_pgd, rob_mma)


def test_more_steps_never_weaker(trained, synth):
    """Over 5 seeds, PGD with more steps leaves no more correct predictions than with fewer (small eps so the
    attack does not saturate at zero)."""
    model, _ = trained
    x, y = to_float(synth.x_test), synth.y_test
    eps = 2 / 255
    acc = {}
    for steps in (1, 3, 10):
        runs = []
        for seed in range(5):
            torch.manual_seed(seed)
            with torch.no_grad():
                runs.append((model(pgd(model, x, y, eps, eps / 4, steps)).argmax(1) == y).float().mean().item())
        acc[steps] = np.mean(runs)
    assert acc[10] <= acc[3] + 0.005 and acc[3] <= acc[1] + 0.005, acc
    assert acc[10] < acc[1], acc


def test_mma_keeps_the_best_single_target_candidate(trained, batch):
    """MMA equals: one uniform start, a targeted margin PGD towards each of the 3 most likely wrong classes,
    and per sample the candidate with the largest z_t - z_y (rebuilt here from the shared helpers)."""
    from attacks.core import ascend, uniform_start
    model, _ = trained
    x, y = batch
    torch.manual_seed(3)
    xa = mma(model, x, y, EPS, 2 / 255, 4, k=3)
    torch.manual_seed(3)
    e = torch.tensor(EPS)
    with torch.no_grad():
        z0 = model(x)
    x0 = uniform_start(x, e)
    rows = torch.arange(len(y))
    best_score = torch.full((len(y),), -float("inf"))
    best = torch.zeros_like(x)
    for rank in range(3):
        t = z0.scatter(1, y[:, None], -float("inf")).sort(1, descending=True).indices[:, rank]
        cand = ascend(model, x, x0, e, 2 / 255, 4, lambda z: -(z[rows, y] - z[rows, t] + 50).clamp(min=0).sum())
        with torch.no_grad():
            z = model(cand)
        score = z[rows, t] - z[rows, y]
        take = score > best_score
        best_score = torch.where(take, score, best_score)
        best[take] = cand[take]
    assert torch.allclose(xa, best, atol=1e-6)


def _trades_reference(ln, la, y, beta):
    n = ln.shape[0]
    ce = -np.mean([np.log(np.exp(ln[i, y[i]]) / np.exp(ln[i]).sum()) for i in range(n)])
    kl = 0.0
    for i in range(n):
        p = np.exp(ln[i]) / np.exp(ln[i]).sum()
        q = np.exp(la[i]) / np.exp(la[i]).sum()
        kl += np.sum(p * (np.log(p) - np.log(q)))
    return ce + beta * kl / n


def _mart_reference(ln, la, y, beta):
    n = ln.shape[0]
    total_bce, total_kl = 0.0, 0.0
    for i in range(n):
        p = np.exp(ln[i]) / np.exp(ln[i]).sum()
        q = np.exp(la[i]) / np.exp(la[i]).sum()
        others = [k for k in range(len(q)) if k != y[i]]
        top_wrong = max(others, key=lambda k: q[k])
        total_bce += -np.log(q[y[i]]) - np.log(1.0001 - q[top_wrong] + 1e-12)
        total_kl += np.sum(p * (np.log(p) - np.log(q + 1e-12))) * (1.0000001 - p[y[i]])
    return total_bce / n + beta * total_kl / n


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_and_mart_losses_match_formulas(beta):
    g = torch.Generator().manual_seed(0)
    ln = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    la = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 5, (7,), generator=g)
    a, b, t = ln.numpy(), la.numpy(), y.numpy()
    assert trades_loss(ln, la, y, beta).item() == pytest.approx(_trades_reference(a, b, t, beta), rel=1e-9)
    assert mart_loss(ln, la, y, beta).item() == pytest.approx(_mart_reference(a, b, t, beta), rel=1e-9)


@pytest.mark.slow
def test_autoattack_runs_through_the_real_package(trained, batch):
    model, _ = trained
    x, y = batch[0][:6], batch[1][:6]
    model.train()
    xa, _ = autoattack(model, x, y, EPS, num_classes=10, batch_size=6)
    assert model.training
    model.eval()
    assert ((xa - x).abs() <= EPS + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        assert (model(xa).argmax(1) == y).sum() <= (model(x).argmax(1) == y).sum()


@pytest.mark.slow
def test_evaluation_record_and_table(trained, synth, tmp_path):
    model, _ = trained
    rec = evaluate(model, synth, attacks=("natural", "pgd20", "mma", "aa"), n_eval=8, batch_size=8)
    assert rec["n_eval"] == 8 and rec["n_test"] == len(synth.y_test)
    for key in ("natural", "pgd20", "mma", "aa"):
        assert 0.0 <= rec[key] <= 100.0 and (rec[key] * 8 / 100) == pytest.approx(round(rec[key] * 8 / 100))
    assert rec["pgd20"] <= rec["natural"] and rec["aa"] <= rec["natural"]
    json.dumps({k: v for k, v in rec.items() if k != "per_image"})  # per_image (arrays) goes to per_image.npz
    assert all(v.shape == (8,) and v.dtype == bool for v in rec["per_image"].values())
    table = markdown_table(rec, "PART")
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | Natural | PGD-20 | MMA | AA |"
    assert lines[2].startswith("| PART | ")
    partial = evaluate(model, synth, attacks=("natural",), n_eval=8)
    assert partial["pgd20"] is None and "| - |" in markdown_table(partial)


def test_frozen_restores_mode_flags_and_grads_even_on_error():
    """The one freeze guarantee (attacks.frozen), used by attacks, CAMs and the evaluation."""
    from attacks import frozen
    torch.manual_seed(0)
    m = build_model("resnet18", 10, width=4).train()
    params = list(m.parameters())
    params[0].requires_grad_(False)
    grads = [torch.full_like(p, 0.5) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    params[1].grad = None
    with pytest.raises(RuntimeError):
        with frozen(m):
            assert not m.training and not any(p.requires_grad for p in params)
            m.zero_grad(set_to_none=True)  # as grad-cam does
            raise RuntimeError("boom")
    assert m.training and not params[0].requires_grad and all(p.requires_grad for p in params[1:])
    assert params[1].grad is None and all(p.grad is g for p, g in zip(params, grads) if p is not params[1])
    m.eval()
    with frozen(m):
        pass
    assert not m.training
