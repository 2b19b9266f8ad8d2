import numpy as np
import pytest
import torch

from models import build_model
from utils.cams import compute_cam, find_target_layer
from utils.figures import save_mask_figure
from utils.mask_rules import jet_table, mask_from_cam
from utils.mask_sources import epsilon_mask
from utils.batches import to_float

EPS, LOW = 8 / 255, 7 / 255


def tiny(name):
    torch.manual_seed(0)
    return build_model(name, 10, width=4 if name == "resnet18" else 1)


@pytest.mark.parametrize("name", ["resnet18", "wrn34-10"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("cam", ["gradcam", "xgradcam", "layercam"])
@pytest.mark.parametrize("rule", ["official", "monotonic"])
def test_values_shape_device(name, size, cam, rule):
    model = tiny(name)
    x = torch.rand(3, 3, size, size)
    m = epsilon_mask(model, x, EPS, LOW, cam=cam, rule=rule)
    assert m.shape == x.shape and m.device == x.device and m.dtype == torch.float32
    values = set(m.unique().tolist())
    assert values <= {torch.tensor(EPS).item(), torch.tensor(LOW).item()} and len(values) == 2


@pytest.mark.parametrize("cam", ["gradcam", "layercam"])
@pytest.mark.parametrize("rule", ["official", "monotonic"])
def test_batched_equals_one_at_a_time(trained, synth, cam, rule):
    model, _ = trained
    x = to_float(synth.x_test[:6])
    whole = epsilon_mask(model, x, EPS, LOW, cam, rule)
    single = torch.cat([epsilon_mask(model, x[i:i + 1], EPS, LOW, cam, rule) for i in range(6)])
    assert torch.equal(whole, single)


def _official_reference(cam_map: np.ndarray) -> np.ndarray:
    """The official PART code's rule, transcribed with matplotlib's own colour map and numpy: returns a
    (3, H, W) boolean 'keeps eps' array."""
    matplotlib = pytest.importorskip("matplotlib")
    rgba = matplotlib.colormaps["jet"](cam_map ** 2)
    overlay = (255 * rgba[:, :, :3]).astype(np.double) / 255
    weights = (overlay - overlay.mean()) / overlay.std()
    weights = np.clip(weights, 1, weights.max())
    return (weights > 1).transpose(2, 0, 1)


def test_official_rule_matches_transcription():
    g = np.random.default_rng(0)
    maps = []
    for _ in range(5):  # smooth blobs like upsampled CAMs, plus exact 0 and 1 values
        yy, xx = np.mgrid[0:32, 0:32]
        cy, cx, s = g.uniform(4, 28), g.uniform(4, 28), g.uniform(3, 10)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s ** 2)) + 0.2 * g.random((32, 32))
        m = (m - m.min()) / (m.max() - m.min())
        maps.append(m.astype(np.float32))
    cams = torch.from_numpy(np.stack(maps))
    mask = mask_from_cam(cams, EPS, LOW, "official")
    differs_per_channel = False
    for i, m in enumerate(maps):
        ref = _official_reference(m.astype(np.float64))
        got = (mask[i] == torch.tensor(EPS)).numpy()
        assert np.array_equal(got, ref), i
        differs_per_channel |= not (np.array_equal(ref[0], ref[1]) and np.array_equal(ref[1], ref[2]))
    assert differs_per_channel


def test_jet_table_is_matplotlibs():
    matplotlib = pytest.importorskip("matplotlib")
    ref = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
    assert np.allclose(jet_table(), ref, atol=1e-12)


def test_monotonic_rule():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(4, 16, 16, generator=g)
    m = mask_from_cam(cams, EPS, LOW, "monotonic")
    assert torch.equal(m[:, 0], m[:, 1]) and torch.equal(m[:, 1], m[:, 2])
    for i in range(4):
        hi = cams[i][m[i, 0] == torch.tensor(EPS)]
        lo = cams[i][m[i, 0] == torch.tensor(LOW)]
        assert hi.numel() > 0 and lo.numel() > 0 and lo.max() < hi.min()
        z = (cams[i] - cams[i].mean()) / cams[i].std(unbiased=False)
        assert torch.equal(m[i, 0] == torch.tensor(EPS), z > 1)


def test_constant_cam():
    """Monotonic: no pixel stands out, all get eps_low. Official: jet(0) = (0, 0, 0.5), so after standardising
    the RGB values the blue channel stands out everywhere and keeps eps (what the official code does)."""
    assert (mask_from_cam(torch.zeros(2, 8, 8), EPS, LOW, "monotonic") == torch.tensor(LOW)).all()
    m = mask_from_cam(torch.zeros(2, 8, 8), EPS, LOW, "official")
    assert (m[:, :2] == torch.tensor(LOW)).all() and (m[:, 2] == torch.tensor(EPS)).all()
    assert np.array_equal(_official_reference(np.zeros((8, 8))), (m[0] == torch.tensor(EPS)).numpy())


def test_mask_finds_the_pasted_pattern(trained, synth):
    """After short (natural) training on the synthetic set, the monotonic GradCAM mask's eps region lies inside
    the class pattern far more often than chance. Measured when written (torch 2.15, CPU): 26% of eps pixels lie
    in the 8x8 pattern versus 6.25% by chance, and 87% of pattern pixels keep eps."""
    model, acc = trained
    x = to_float(synth.x_test)
    keep = epsilon_mask(model, x, EPS, LOW, "gradcam", "monotonic")[:, 0] == torch.tensor(EPS)
    p = synth.extra["pattern"]
    inside = torch.zeros_like(keep)
    for i, (r, c) in enumerate(synth.extra["test_loc"]):
        inside[i, r:r + p, c:c + p] = True
    chance = p * p / (32 * 32)
    precision = (keep & inside).sum().item() / keep.sum().item()
    recall = (keep & inside).sum().item() / inside.sum().item()
    assert precision > 3 * chance, (precision, chance)
    assert recall > 0.6, recall


@pytest.mark.parametrize("backend", ["grad-cam", "torch"])
@pytest.mark.parametrize("cam", ["gradcam", "xgradcam", "layercam"])
def test_model_left_as_found(cam, backend):
    model = tiny("resnet18").train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epsilon_mask(model, torch.rand(4, 3, 32, 32), EPS, LOW, cam, backend=backend)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert not frozen.requires_grad and all(p.requires_grad for p in list(model.parameters())[1:])
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._backward_hooks and not mod._forward_pre_hooks
    model.eval()
    epsilon_mask(model, torch.rand(2, 3, 32, 32), EPS, LOW, cam, backend=backend)
    assert not model.training


def test_wrapped_and_unknown_models():
    model = tiny("resnet18")
    wrapped = torch.nn.DataParallel(model)
    assert find_target_layer(wrapped) is model.layer4
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 10))
    with pytest.raises(ValueError, match="target_layer"):
        epsilon_mask(seq, torch.rand(2, 3, 16, 16), EPS, LOW)
    m = epsilon_mask(seq, torch.rand(2, 3, 16, 16), EPS, LOW, target_layer="1")
    assert m.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="official, monotonic"):
        epsilon_mask(model, torch.rand(2, 3, 32, 32), EPS, LOW, rule="top10")
    with pytest.raises(ValueError, match="gradcam, xgradcam, layercam"):
        compute_cam(model, torch.rand(2, 3, 32, 32), cam="scorecam")


def test_mask_figure(trained, synth, tmp_path):
    from PIL import Image
    model, _ = trained
    x = to_float(synth.x_test[:4])
    cam = compute_cam(model, x)
    save_mask_figure(str(tmp_path / "m.png"), x, cam, mask_from_cam(cam, EPS, LOW), EPS, LOW, "test")
    with Image.open(tmp_path / "m.png") as im:
        w, h = im.size
    assert h > 3 * 32 * 4 and w > 4 * 32 * 4


@pytest.mark.parametrize("cam", ["gradcam", "xgradcam", "layercam"])
@pytest.mark.parametrize("name,size", [("resnet18", 32), ("wrn34-10", 64)])
def test_torch_backend_matches_grad_cam(trained, synth, cam, name, size):
    model = trained[0] if (name, size) == ("resnet18", 32) else tiny(name).eval()
    x = to_float(synth.x_test[:16])
    if size == 64:
        x = torch.nn.functional.interpolate(x, size=64, mode="bilinear")
    ref = compute_cam(model, x, cam, backend="grad-cam")
    got = compute_cam(model, x, cam, backend="torch")
    assert got.shape == ref.shape and (got - ref).abs().max() < 1e-4
    model.train()
    compute_cam(model, x, cam, backend="torch")
    assert model.training
    for mod in model.modules():
        assert not mod._forward_hooks
    model.eval()
