import pytest
import torch

from models import CheckpointMismatch, ResNet18, WideResNet, build_model, load_checkpoint


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts():
    assert n_params(ResNet18(num_classes=10)) == 11_173_962
    assert n_params(WideResNet(depth=34, widen_factor=10, num_classes=10)) == 46_160_474


@pytest.mark.parametrize("name", ["resnet18", "wrn34-10"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("classes", [10, 200])
def test_input_sizes_and_classes(name, size, classes):
    model = build_model(name, classes, width=4 if name == "resnet18" else 1).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, classes)


def test_state_dict_names():
    r = ResNet18().state_dict()
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
                "layer4.1.bn2.weight", "linear.weight", "linear.bias"]:
        assert key in r
    w = WideResNet(34, 10, 10).state_dict()
    for key in ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.4.conv2.weight", "bn1.weight", "fc.weight"]:
        assert key in w
    assert not any(k.startswith("sub_block1") for k in w)


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="resnet18.*wrn34-10"):
        build_model("vgg16", 10)


def test_load_foreign_checkpoints(tmp_path):
    """DataParallel prefixes and the TRADES WRN's sub_block1 are handled; the weights arrive intact."""
    src = WideResNet(depth=10, widen_factor=1, num_classes=10)
    state = {"module." + k: v for k, v in src.state_dict().items()}
    state["module.sub_block1.layer.0.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    torch.save(state, tmp_path / "trades.pt")
    dst = WideResNet(depth=10, widen_factor=1, num_classes=10)
    load_checkpoint(dst, tmp_path / "trades.pt")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_mismatch_names_keys(tmp_path):
    torch.save(ResNet18(num_classes=10, width=4).state_dict(), tmp_path / "r.pt")
    with pytest.raises(CheckpointMismatch, match="linear.weight"):
        load_checkpoint(ResNet18(num_classes=100, width=4), tmp_path / "r.pt")
    with pytest.raises(CheckpointMismatch, match="missing keys: block1.*unexpected keys: layer1"):
        load_checkpoint(WideResNet(10, 1, 10), tmp_path / "r.pt")


@pytest.mark.parametrize("value,word", [(3, "not dense tensors: linear.bias"), (float("nan"), "non-finite .* in: linear.bias"),
                                        (float("inf"), "non-finite .* in: linear.bias")])
def test_weights_that_are_no_tensors_or_not_finite_are_refused_and_the_model_is_untouched(value, word):
    state = ResNet18(num_classes=10, width=4).state_dict()
    state["linear.bias"] = value if isinstance(value, int) else torch.full_like(state["linear.bias"], value)
    model = ResNet18(num_classes=10, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match=word):
        load_checkpoint(model, "r.pt", obj={"model": state})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
