"""The evaluation suite: CW-inf, PGD-N, the mask-aware attack, CIFAR-10-C, AutoAttack's breakdown, the record."""
import json
import logging

import numpy as np
import pytest
import torch

from tests.test_reliability import call
from tests.test_scripts import TINY, run
from utils.batches import to_float
from utils.errors import UsageError
from utils.corruptions import COMMON, EXTRA, corruption_files, evaluate_corruptions
from utils.evaluate import EVAL_ATTACKS, eval_attack, evaluate
from utils.mask_sources import epsilon_mask

EPS, LOW = 8 / 255, 7 / 255
CFG = {"low_epsilon": LOW, "cam": "gradcam", "mask_rule": "official", "cam_layer": None, "cam_backend": "grad-cam"}


@pytest.mark.parametrize("name", ["cw", "part-pgd", "pgd50"])
def test_new_attacks_stay_within_their_budgets(name, trained, synth):
    model, _ = trained
    x, y = to_float(synth.x_test[:24]), synth.y_test[:24]
    torch.manual_seed(0)
    xa = eval_attack(name).run(model, x, y, {"eps": EPS, "step_size": 2 / 255, "cfg": CFG})
    bound = epsilon_mask(model, x, EPS, LOW) if name == "part-pgd" else torch.full_like(x, EPS)
    assert ((xa - x).abs() <= bound + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
    assert (xa - x).abs().max() > 1 / 255
    if name == "part-pgd":  # the mask-aware attack uses eps_low where the mask says so, and eps elsewhere
        assert ((xa - x).abs() > LOW + 1e-6).any()
        assert ((xa - x).abs()[bound < EPS] <= LOW + 1e-6).all()


def test_cw_and_longer_pgd_on_a_trained_model(trained, synth):
    model, _ = trained
    rec = evaluate(model, synth, attacks=("natural", "pgd20", "pgd50", "cw", "part-pgd"), eps=2 / 255,
                   step_size=0.5 / 255, n_eval=64, batch_size=32, cfg=CFG)
    assert rec["cw"] <= rec["natural"] and rec["pgd50"] <= rec["natural"] and rec["part-pgd"] <= rec["natural"]
    assert rec["natural"] > 50 and rec["cw"] < rec["natural"]
    # each attack is seeded afresh: its figure does not depend on which attacks ran before it
    again = evaluate(model, synth, attacks=("pgd50",), eps=2 / 255, step_size=0.5 / 255, n_eval=64, batch_size=32)
    assert again["pgd50"] == rec["pgd50"] and again["natural"] is None


def test_unknown_attack_names_are_refused():
    for bad in ("pgd", "pgd0", "pgd-5", "fgsm"):
        with pytest.raises(ValueError, match="unknown evaluation attack"):
            eval_attack(bad)
    assert eval_attack("pgd7").title == "PGD-7" and set(EVAL_ATTACKS) >= {"natural", "pgd20", "mma", "cw", "aa"}


def test_per_image_bits_equal_one_by_one_classification(trained, synth):
    model, _ = trained
    res = evaluate(model, synth, attacks=("natural", "pgd20"), n_eval=20, batch_size=8)
    device = next(model.parameters()).device
    with torch.no_grad():
        alone = [bool(model(to_float(synth.x_test[i:i + 1]).to(device)).argmax(1).item() == synth.y_test[i].item())
                 for i in range(20)]
    assert res["per_image"]["natural"].tolist() == alone
    assert res["per_image"]["pgd20"].dtype == bool and res["per_image"]["pgd20"].shape == (20,)
    for name in ("natural", "pgd20"):
        assert res[name] == 100.0 * res["per_image"][name].sum() / 20


def test_evaluation_logs_a_line_per_attack(trained, synth, caplog):
    model, _ = trained
    log = logging.getLogger("test-eval")
    with caplog.at_level(logging.INFO, logger="test-eval"):
        evaluate(model, synth, attacks=("natural", "pgd20", "cw"), n_eval=16, batch_size=16, log=log)
    lines = [r.getMessage() for r in caplog.records]
    for name in ("natural", "pgd20", "cw"):
        assert any(m.startswith(f"eval {name}: started on 16") for m in lines), lines
        assert any(m.startswith(f"eval {name}: ") and "% (" in m and " s" in m for m in lines), lines


def cifar10c(folder, data, n=40, invert="contrast"):
    """A CIFAR-10-C folder in the published layout from the first n test images: `brightness` holds the clean
    images at every severity (so its accuracy is the natural one) and `invert` names the file of 255 - x."""
    folder.mkdir()
    x = data.x_test[:n].permute(0, 2, 3, 1).numpy()
    y = data.y_test[:n].numpy()
    np.save(folder / "brightness.npy", np.concatenate([x] * 5))
    np.save(folder / f"{invert}.npy", np.concatenate([255 - x] * 5))
    np.save(folder / "labels.npy", np.concatenate([y] * 5))
    return folder


def test_identity_corruption_equals_natural_accuracy(trained, synth, tmp_path):
    model, _ = trained
    folder = cifar10c(tmp_path / "c", synth)
    res = evaluate_corruptions(model, str(folder), n_eval=24, batch_size=16)
    nat = evaluate(model, synth, attacks=("natural",), n_eval=24, batch_size=16)["natural"]
    assert res["brightness"] == [nat] * 5 and res["mean_of"] == ["brightness", "contrast"] and res["images"] == 24
    assert evaluate_corruptions(model, str(folder), n_eval=0, batch_size=16)["images"] == 40  # all of a severity
    assert len(res["contrast"]) == 5 and res["mean"] == pytest.approx(np.mean(res["brightness"] + res["contrast"]))


def test_extra_corruptions_are_reported_beside_the_mean_not_in_it(trained, synth, tmp_path):
    """The published mean is over the fifteen common corruptions; the four extra ones stay out of it."""
    model, _ = trained
    folder = cifar10c(tmp_path / "c", synth, invert="saturate")
    res = evaluate_corruptions(model, str(folder), n_eval=24, batch_size=16)
    assert "saturate" in COMMON + EXTRA and "saturate" not in COMMON
    assert res["mean_of"] == ["brightness"] and res["mean"] == pytest.approx(np.mean(res["brightness"]))
    assert res["mean_extra"] == pytest.approx(np.mean(res["saturate"])) and res["saturate"] != res["brightness"]


@pytest.mark.parametrize("damage,word", [
    ("missing", "not a folder"), ("no-labels", "labels.npy is missing"), ("not-multiple", "not a multiple of 5"),
    ("labels-mismatch", "but labels.npy"), ("not-uint8", "uint8"), ("not-npy", "not a readable"),
    ("stray-npy", "is not a CIFAR-10-C corruption")])
def test_malformed_cifar10c_folder_exits_2(damage, word, trained, synth, tmp_path, capsys):
    folder = tmp_path / "missing"
    if damage != "missing":
        folder = cifar10c(tmp_path / "c", synth)
        if damage == "no-labels":
            (folder / "labels.npy").unlink()
        elif damage == "not-multiple":
            np.save(folder / "brightness.npy", np.zeros((198, 32, 32, 3), np.uint8))
        elif damage == "labels-mismatch":
            np.save(folder / "labels.npy", np.zeros(195, np.int64))
        elif damage == "not-uint8":
            np.save(folder / "contrast.npy", np.zeros((200, 32, 32, 3), np.float32))
        elif damage == "stray-npy":  # a well-formed file of a name CIFAR-10-C does not publish
            np.save(folder / "brightness_old.npy", np.load(folder / "brightness.npy"))
        else:
            (folder / "fog.npy").write_bytes(b"garbage")
    with pytest.raises(UsageError, match=word):
        corruption_files(str(folder))
    code, err = call("part", [*TINY, "--eval-corruptions", str(folder), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and word in err and not (tmp_path / "r").exists()


def test_record_names_its_code_and_carries_robustbench_fields(tmp_path):
    from utils.data import synthetic
    folder = cifar10c(tmp_path / "c", synthetic())  # the scripts' synthetic test set
    assert run("part", tmp_path / "r", "--eval-attacks", "natural", "pgd20", "cw", "--eval-corruptions",
               str(folder)) == 0
    rec = json.loads((tmp_path / "r" / "results.json").read_text())
    assert len(rec["commit"]) == 40 and isinstance(rec["dirty"], bool)
    assert rec["command"][0].endswith("python") or "python" in rec["command"][0]
    assert {"clean_acc": f"{rec['natural']:.2f}", "autoattack_acc": None, "eps": "8/255", "architecture":
            "ResNet-18 (width 4)", "dataset": "synthetic", "threat_model": "Linf",
            "number_forward_passes": 1}.items() <= rec.items()
    assert rec["cw"] <= rec["natural"]
    assert set(rec["corruptions"]) == {"brightness", "contrast", "mean", "mean_of", "images"}
    assert rec["corruptions"]["images"] == rec["n_eval"] == 32
    assert rec["corruptions"]["brightness"][0] == rec["natural"]  # the same 32 images
    md = (tmp_path / "r" / "results.md").read_text()
    assert "| Natural | PGD-20 | CW-inf | CIFAR-10-C |" in md


def test_eval_only_reads_an_old_checkpoint(tmp_path, capsys):
    """A checkpoint of the previous version (config without the later keys, numpy RNG state pickled) evaluates."""
    assert run("part", tmp_path / "r", "--epochs", "1", "--warm-up", "0", "--eval-attacks", "natural") == 0
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    cfg = {k: v for k, v in ckpt["config"].items() if k not in (
        "mask_source", "mask_refresh", "region_eps", "data_fingerprint", "tensorboard", "eval_corruptions",
        "overwrite", "num_classes", "image_size")}
    cfg.update(method="PART", baseline="AT", eval_attacks=["natural", "pgd20", "mma", "aa"])
    old = {"model": ckpt["model"], "optimizer": ckpt["optimizer"], "epoch": 1, "best_pgd20": 1.0, "config": cfg,
           "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": __import__("random").getstate()}}
    torch.save(old, tmp_path / "old.pt")
    code, err = call("part", ["--eval-only", str(tmp_path / "old.pt"), "--eval-attacks", "natural", "pgd20",
                              "--n-eval", "16"], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "eval_old.json").read_text())
    assert rec["method"] == "PART" and rec["n_eval"] == 16 and rec["pgd20"] is not None
    assert rec["config"]["mask_source"] == "cam"


@pytest.mark.slow
def test_autoattack_breakdown_and_log(tmp_path):
    assert run("part", tmp_path / "r", "--eval-attacks", "natural", "aa", "--n-eval", "8", "--width", "8",
               "--epochs", "3", "--lr-milestones", "3") == 0
    rec = json.loads((tmp_path / "r" / "results.json").read_text())
    log = (tmp_path / "r" / "aa_log.txt").read_text()
    assert "initial accuracy" in log and rec["aa_breakdown"]["clean"] == rec["natural"]
    steps = [k for k in ("apgd-ce", "apgd-t", "fab-t", "square") if k in rec["aa_breakdown"]]
    assert all(f"robust accuracy after {k.upper()}" in log for k in steps)
    values = [rec["aa_breakdown"][k] for k in ["clean", *steps]]
    assert values == sorted(values, reverse=True) and rec["aa"] == pytest.approx(values[-1])
    assert "eval aa: robust accuracy after" in (tmp_path / "r" / "log.txt").read_text() or not steps


def test_make_cifar10c_writes_the_published_layout(tmp_path, trained):
    pytest.importorskip("imagecorruptions")
    from tools import make_cifar10c
    out = tmp_path / "c"
    assert make_cifar10c.main(["--data", "synthetic", "--n", "6", "--out", str(out), "--corruptions",
                               "gaussian_noise", "contrast"]) == 0
    assert corruption_files(str(out)) == ["contrast", "gaussian_noise"]
    a = np.load(out / "gaussian_noise.npy")
    assert a.shape == (30, 32, 32, 3) and a.dtype == np.uint8 and np.load(out / "labels.npy").shape == (30,)
    res = evaluate_corruptions(trained[0], str(out))
    assert len(res["contrast"]) == 5 and 0 <= res["mean"] <= 100


def test_versions_name_the_cpu_and_the_kernels_it_runs():
    """Records carry the CPU and the instruction set torch's kernels use: the same library versions on two CPUs
    can round differently, and a reproduction check must be able to tell the machines apart."""
    from utils.evaluate import library_versions
    cpu = library_versions(torch.device("cpu"))["cpu"]
    assert cpu.endswith(", " + torch.backends.cpu.get_cpu_capability()) and len(cpu) > len(", AVX2")
