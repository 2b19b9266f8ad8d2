import os
import signal
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pytest-xdist (`-n N`) runs N workers: each gets its share of the cores, and the processes its tests start inherit
# that share through OMP_NUM_THREADS, so that workers and their children never ask for more threads than there are
# cores (OpenMP threads that wait for a busy core slow a tiny model several times over).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(min(THREADS, torch.get_num_threads()))

# A suite started in the background by a non-interactive shell (`cmd &`, as some CI runners do) inherits SIGINT
# ignored, and so would every process a test starts: the Ctrl-C tests need it delivered, as in a terminal. A
# Python handler (unlike SIG_IGN) is reset to the default in the processes the tests start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_NPZ = os.path.join(ROOT, "..", "shared", "data", "cifar10_subset.npz")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth():
    from utils.data import synthetic
    return synthetic(n_train=1000, n_test=200)


@pytest.fixture(scope="session")
def trained(synth, tmp_path_factory):
    """A width-8 ResNet-18 trained naturally (not robustly) on the synthetic set; returns (model, test acc) with
    the model in eval mode. Under pytest-xdist the first worker to ask trains it and saves the weights beside the
    workers' temporary folders; the others load them."""
    from models import build_model
    from utils.batches import to_float
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=8)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        train_naturally(model, synth)
    else:
        from filelock import FileLock
        shared = tmp_path_factory.getbasetemp().parent / "trained_width8.pt"  # this session's, shared by its workers
        with FileLock(str(shared) + ".lock"):
            if shared.is_file():
                model.load_state_dict(torch.load(shared, weights_only=True))
            else:
                train_naturally(model, synth)
                torch.save(model.state_dict(), str(shared) + ".tmp")
                os.replace(str(shared) + ".tmp", shared)
    model.eval()
    with torch.no_grad():
        acc = (model(to_float(synth.x_test)).argmax(1) == synth.y_test).float().mean().item()
    return model, acc


def train_naturally(model, synth):
    """Ten epochs of plain cross-entropy training. The last two run at a tenth of the learning rate: without that,
    the eval-mode accuracy after a given epoch swings between 15% and 100% with the number of CPU threads
    (BatchNorm statistics of a tiny set)."""
    import torch.nn.functional as F

    from utils.batches import epoch_generator, train_batches
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for epoch in range(10):
        for group in opt.param_groups:
            group["lr"] = 0.01 if epoch < 8 else 0.001
        for x, y in train_batches(synth, 64, epoch_generator(0, epoch)):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def tiny_imagenet_folder(root, wnids, per_class, train_value, val_value):
    """A TinyImageNet-200 folder as distributed, in miniature: per_class constant-colour training images per wnid
    (colour train_value(k, i)) and one validation image per wnid (colour val_value(k)). Returns its base folder."""
    import numpy as np
    from PIL import Image
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ann = []
    for k, w in enumerate(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((64, 64, 3), train_value(k, i), np.uint8)).save(d / f"{w}_{i}.JPEG", quality=100)
        Image.fromarray(np.full((64, 64, 3), val_value(k), np.uint8)).save(base / "val" / "images" / f"val_{k}.JPEG",
                                                                           quality=100)
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return base


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """A finished 3-epoch PART run with a checkpoint of every epoch (one per test module that asks)."""
    from tests.test_scripts import run
    out = tmp_path_factory.mktemp("three") / "run"
    assert run("part", out, "--epochs", "3", "--save-freq", "1", "--eval-attacks", "natural") == 0
    return out
