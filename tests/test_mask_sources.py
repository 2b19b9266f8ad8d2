"""Mask sources: cam, official (the official code's pipeline), permuted (control), regions (Figure 1)."""
import numpy as np
import pytest
import torch

from models import build_model
from utils.batches import epoch_generator, epoch_permutation, to_float, train_batches
from utils.data import synthetic
from utils.mask_rules import mask_from_cam
from utils.mask_sources import (MASK_SOURCES, BudgetStats, derangement, epsilon_mask, make_source,
                                official_postprocess, region_budget, source_generator)

EPS, LOW = 8 / 255, 7 / 255


def cfg(**kw):
    base = dict(epsilon=EPS, low_epsilon=LOW, cam="gradcam", mask_rule="official", cam_layer=None,
                cam_backend="grad-cam", seed=3, warm_up=1, mask_refresh=1, batch_size=16, n_train=40,
                region_eps=[6 / 255, 12 / 255, 12 / 255, 12 / 255], mask_source="cam")
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("resnet18", 10, width=4).eval()


@pytest.mark.parametrize("name", list(MASK_SOURCES))
def test_every_source_gives_budgets_shaped_like_the_batch(name, small, synth):
    c = cfg(mask_source=name)
    src = make_source(c, synth)
    src.start_epoch(small, 2)
    for i, (x, _) in enumerate(train_batches(synth, 16, epoch_generator(3, 2), n_train=40)):
        b = src.budget(small, x, i)
        assert b.shape == x.shape and b.dtype == torch.float32
        allowed = {torch.tensor(v, dtype=torch.float32).item() for v in
                   ((EPS, LOW) if name != "regions" else c["region_eps"])}
        assert set(b.unique().tolist()) <= allowed


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (7, 8)])
def test_regions_are_exact_quadrants(size):
    h, w = size
    x = torch.zeros(2, 3, h, w)
    ul, ur, br, bl = 1 / 255, 2 / 255, 3 / 255, 4 / 255
    b = region_budget(x, [ul, ur, br, bl])
    top, left = h // 2, w // 2
    f = torch.float32
    assert (b[:, :, :top, :left] == torch.tensor(ul, dtype=f)).all()
    assert (b[:, :, :top, left:] == torch.tensor(ur, dtype=f)).all()
    assert (b[:, :, top:, left:] == torch.tensor(br, dtype=f)).all()
    assert (b[:, :, top:, :left] == torch.tensor(bl, dtype=f)).all()


def test_derangement_and_permuted_source(small, synth):
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 16, 128):
        for _ in range(20):
            p = derangement(n, g)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    assert derangement(1, g).tolist() == [0]
    # the permuted source hands the batch's own masks to other images: the multiset of masks is unchanged
    c = cfg(mask_source="permuted")
    src = make_source(c, synth)
    src.start_epoch(small, 2)
    x = to_float(synth.x_train[:12])
    own = epsilon_mask(small, x, EPS, LOW)
    src.generator = source_generator(3, 2, 0, stream=2)
    got = src.budget(small, x, 0)
    perm = derangement(12, source_generator(3, 2, 0, stream=2))
    assert torch.equal(got, own[perm]) and not (perm == torch.arange(12)).any()
    key = lambda t: t.flatten().tolist()  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, own))


def test_budget_statistics_are_exact():
    x = torch.zeros(4, 3, 32, 32)
    s = BudgetStats(EPS, "cpu")
    s.add(EPS, x)  # a plain batch: 8/255 everywhere
    assert BudgetStats.summary(s.tensor()) == {"budget_mean": 8.0, "eps_share": 1.0}
    s = BudgetStats(EPS, "cpu")
    s.add(region_budget(x, [6 / 255, 12 / 255, 12 / 255, 12 / 255]), x)  # Figure 1: 6/12/12/12
    assert BudgetStats.summary(s.tensor()) == {"budget_mean": 10.5, "eps_share": 0.0}
    s = BudgetStats(EPS, "cpu")
    half = torch.where(torch.arange(32)[None, None, :, None] < 8, EPS, LOW).float().expand_as(x)  # a quarter at eps
    s.add(half, x)
    s.add(EPS, x)
    assert BudgetStats.summary(s.tensor()) == {"budget_mean": round((7.25 + 8) / 2, 4), "eps_share": 0.625}


# ----------------------------------------------------------------------------------------------------
# the official pipeline
# ----------------------------------------------------------------------------------------------------
def official_transcription(raw: np.ndarray, size: int) -> np.ndarray:
    """The official code's steps for one image, written independently with the libraries it used: torchcam's
    normalisation, torchvision 0.14's to_pil_image of a float array (mode 'F'), PIL's bicubic resize,
    squaring, matplotlib's jet, process_overlay's standardisation and the > 1 threshold. Returns the (3, H, W)
    'keeps eps' array."""
    from PIL import Image
    matplotlib = pytest.importorskip("matplotlib")
    with np.errstate(invalid="ignore", divide="ignore"):
        m = raw.astype(np.float32) - raw.min()
        m = m / m.max()
    overlay = Image.fromarray(m.astype(np.float32), mode=None).resize((size, size), resample=Image.BICUBIC)
    rgba = matplotlib.colormaps["jet"](np.asarray(overlay) ** 2)
    o = (255 * rgba[:, :, :3]).astype(np.double) / 255
    with np.errstate(invalid="ignore", divide="ignore"):
        w = (o - o.mean()) / o.std()
    return (w > 1).transpose(2, 0, 1)


def test_official_postprocessing_matches_transcription():
    g = np.random.default_rng(1)
    raws = [np.maximum(g.normal(size=(4, 4)), 0) for _ in range(30)]  # relu'd 4x4 maps, as ResNet-18's layer4
    raws += [np.maximum(g.normal(size=(8, 8)), 0) for _ in range(10)]  # 8x8 (the WRN's block3 at 32 px)
    raws += [np.zeros((4, 4)), np.full((4, 4), 2.0)]  # constant maps: NaN in torchcam, eps_low everywhere
    agree = total = 0
    for raw in raws:
        v = official_postprocess(torch.from_numpy(raw)[None], (32, 32))
        got = (mask_from_cam(v, EPS, LOW, "official")[0] == torch.tensor(EPS)).numpy()
        ref = official_transcription(raw, 32)
        agree += (got == ref).sum()
        total += ref.size
    assert agree / total >= 0.99, agree / total
    for raw in raws[-2:]:  # all-zero or constant CAM: eps_low everywhere
        v = official_postprocess(torch.from_numpy(raw)[None], (32, 32))
        assert (mask_from_cam(v, EPS, LOW, "official") == torch.tensor(LOW)).all()


def test_official_path_never_quantises_to_8_bits():
    """Since torchvision 0.17, to_pil_image turns a float CAM into an 8-bit image and the official code's square
    of it wraps around. Our path stays float: a CAM whose squared 8-bit values would overflow (255 * v > 16)
    gives the float transcription's mask, not the wrapped one."""
    yy, xx = np.mgrid[0:32, 0:32]
    cam = np.exp(-((yy - 12) ** 2 + (xx - 20) ** 2) / 60.0)
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    float_keep = mask_from_cam(torch.from_numpy(cam)[None], EPS, LOW, "official")[0] == torch.tensor(EPS)
    matplotlib = pytest.importorskip("matplotlib")

    def rule(v):  # the official rule on an array v already squared
        rgba = matplotlib.colormaps["jet"](v)[:, :, :3]
        w = (rgba - rgba.mean()) / rgba.std()
        return torch.from_numpy((w > 1).transpose(2, 0, 1))

    assert torch.equal(float_keep, rule(cam ** 2))
    wrapped = (np.round(cam * 255).astype(np.uint8) ** 2)  # uint8 square: wraps modulo 256
    assert (cam * 255 > 16).any() and not torch.equal(float_keep, rule(wrapped))
    # the official source's own post-processing is float too: a 4x4 map upsampled equals the float transcription
    raw = np.array([[0, 1, 2, 3], [1, 5, 9, 4], [2, 9, 16, 5], [0, 2, 3, 1]], dtype=np.float64)
    v = official_postprocess(torch.from_numpy(raw)[None], (32, 32))
    got = (mask_from_cam(v, EPS, LOW, "official")[0] == torch.tensor(EPS)).numpy()
    assert (got == official_transcription(raw, 32)).mean() >= 0.99


def test_official_source_applies_pass_batch_i_to_training_batch_i(small, synth):
    c = cfg(mask_source="official")
    src = make_source(c, synth)
    src.start_epoch(small, 2)
    pass_batches = list(train_batches(synth, 16, source_generator(3, 2, 0, stream=1), n_train=40))
    train = list(train_batches(synth, 16, epoch_generator(3, 2), n_train=40))
    assert len(src.masks) == len(pass_batches) == len(train)
    for i, ((xp, _), (xt, _)) in enumerate(zip(pass_batches, train)):
        expected = src.own_masks(small, xp)  # the masks of pass-batch i ...
        assert torch.equal(src.budget(small, xt, i), expected)  # ... are what training batch i gets
    assert not torch.equal(pass_batches[0][0], train[0][0])  # a separate shuffle: masks land on other images
    n = 40
    own = (epoch_permutation(n, source_generator(3, 2, 0, stream=1)) == epoch_permutation(n, epoch_generator(3, 2)))
    assert src.own_share == own.double().mean().item()


def test_official_masks_round_trip_and_damaged_masks_are_refused(small, synth):
    c = cfg(mask_source="official", mask_refresh=3)
    src = make_source(c, synth)
    src.start_epoch(small, 2)
    state = src.state_dict()
    back = make_source(c, synth)
    back.load_state_dict(state)
    assert back.pass_epoch == 2 and all(torch.equal(a, b) for a, b in zip(src.masks, back.masks))
    for damage in ("one mask fewer", "other shapes", "bits cut", "pass epoch text", "warm-up pass"):
        bad = {k: list(v) if isinstance(v, list) else v for k, v in state.items()}
        if damage == "one mask fewer":
            bad["shapes"], bad["bits"] = bad["shapes"][:-1], bad["bits"][:-1]
        elif damage == "other shapes":
            bad["shapes"] = [[s[0] // 2, *s[1:]] for s in bad["shapes"]]
        elif damage == "bits cut":
            bad["bits"][0] = bad["bits"][0][:10]
        else:
            bad["pass_epoch"] = "2" if damage == "pass epoch text" else 1
        fresh = make_source(c, synth)
        with pytest.raises(ValueError):
            fresh.load_state_dict(bad)
        assert fresh.masks is None, damage


def test_official_pass_schedule():
    src = make_source(cfg(mask_source="official", warm_up=4, mask_refresh=3), synthetic(n_train=8, n_test=4))
    assert [e for e in range(5, 15) if src.pass_due(e)] == [5, 7, 10, 13]  # masked epochs 1, 3, 6, 9


def test_own_image_rate_is_about_one_over_n():
    """Two independent shuffles of N images put the same image in the same slot about once per epoch."""
    n, hits = 500, 0
    for epoch in range(1, 201):
        a = epoch_permutation(n, source_generator(1, epoch, 0, stream=1))
        b = epoch_permutation(n, epoch_generator(1, epoch))
        hits += int((a == b).sum())
    assert 0.5 < hits / 200 < 1.6, hits / 200
