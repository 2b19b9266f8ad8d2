import os

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_NPZ, tiny_imagenet_folder
from utils.batches import epoch_generator, random_crop_flip, eval_batches, train_batches
from utils.data import DataNotFound, load_dataset, synthetic


def test_synthetic_is_deterministic():
    a, b = synthetic(n_train=50, n_test=20), synthetic(n_train=50, n_test=20)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert np.array_equal(a.extra["test_loc"], b.extra["test_loc"])
    assert a.x_train.dtype == torch.uint8 and a.x_train.shape == (50, 3, 32, 32)
    assert not torch.equal(a.x_train, synthetic(n_train=50, n_test=20, seed=1).x_train)


def test_synthetic_pattern_at_stored_location():
    d = synthetic(n_train=30, n_test=5)
    p = d.extra["pattern"]
    for i in range(5):
        r, c = d.extra["test_loc"][i]
        patch = d.x_test[i, :, r:r + p, c:c + p]
        assert set(patch.unique().tolist()) <= {0, 255}
        same_class = (d.y_test == d.y_test[i]).nonzero().flatten()
        for j in same_class.tolist():
            rj, cj = d.extra["test_loc"][j]
            assert torch.equal(patch, d.x_test[j, :, rj:rj + p, cj:cj + p])


def test_synthetic_is_learnable(trained):
    _, acc = trained
    assert acc > 0.8, f"a small ResNet-18 should learn the synthetic set; test accuracy {acc:.2f}"


def test_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), y_train=np.arange(12) % 10,
             x_test=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), y_test=np.arange(6))
    d = load_dataset("cifar10-npz", str(path))
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    with np.load(path) as z:
        assert np.array_equal(d.x_train[3].permute(1, 2, 0).numpy(), z["x_train"][3])
    assert d.num_classes == 10 and d.crop_padding == 4 and d.flip


@pytest.mark.parametrize("edit,words", [
    (lambda d: d.y_train.fill_(3), ["synthetic: the training labels hold only class 3", "(synthetic has 10 classes)",
                                    "at least two classes"]),
    (lambda d: d.y_train.__setitem__(0, 10), ["the train labels must lie in [0, 10)", "found 0..10"]),
    (lambda d: d.y_test.__setitem__(0, -1), ["the test labels must lie in [0, 10)", "found -1..9"]),
    (lambda d: setattr(d, "y_train", d.y_train.float()), ["the train labels must be 1-D integers"]),
    (lambda d: setattr(d, "y_test", d.y_test[:-1]), ["499 test labels for 500 images"]),
])
def test_every_loader_checks_its_labels(edit, words, monkeypatch):
    """Whatever loads a data set (here the built-in synthetic set, made to return bad labels), load_dataset refuses
    labels outside [0, num_classes) and a training set of fewer than two classes, in one line that names them (a
    one-class set would otherwise train, and log '10 classes')."""
    import dataclasses
    from utils import data as data_mod
    from utils.errors import UsageError

    def bad(root, download=False):
        d = data_mod.synthetic()
        edit(d)
        return d

    monkeypatch.setitem(data_mod.DATASETS, "synthetic", dataclasses.replace(data_mod.DATASETS["synthetic"], load=bad))
    with pytest.raises(UsageError) as e:
        load_dataset("synthetic")
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


def test_the_classes_an_epoch_uses_are_checked_with_n_train():
    from utils.data import check_labels
    from utils.errors import UsageError
    d = synthetic(n_train=200, n_test=20)
    d.y_train[:50], d.y_train[50] = 4, 7
    check_labels(d, "synthetic", n_train=51)
    with pytest.raises(UsageError, match=r"the first 50 training labels \(--n-train 50\) hold only class 4"):
        check_labels(d, "synthetic", n_train=50)


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="shared CIFAR-10 subset not present")
def test_shared_cifar_subset_loads():
    d = load_dataset("cifar10-npz", SHARED_NPZ)
    assert d.x_train.shape == (5085, 3, 32, 32) and d.x_test.shape == (1017, 3, 32, 32)
    assert sorted(d.y_train.unique().tolist()) == list(range(10))


@pytest.mark.parametrize("name,words", [("cifar10", ["cifar-10-batches-py", "--download"]),
                                        ("svhn", ["train_32x32.mat", "--download"]),
                                        ("tinyimagenet", ["tiny-imagenet-200", "unzip"]),
                                        ("cifar10-npz", ["is not a file"])])
def test_missing_data_error_names_folder_and_fix(tmp_path, name, words):
    root = tmp_path / "nothing_here"
    root.mkdir()
    with pytest.raises(DataNotFound) as e:
        load_dataset(name, str(root))
    msg = str(e.value)
    assert str(root) in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_present_but_damaged_data_file_is_named_as_damaged(tmp_path, name):
    """A truncated or garbled file is no missing one: the message names the file and says it is damaged."""
    from torchvision.datasets import CIFAR10, SVHN
    files = ([f"cifar-10-batches-py/{f}" for f, _ in CIFAR10.train_list + CIFAR10.test_list] if name == "cifar10"
             else [SVHN.split_list[s][1] for s in ("train", "test")])
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"half a download")
    with pytest.raises(DataNotFound, match="is damaged") as e:
        load_dataset(name, str(tmp_path))
    assert str(tmp_path / files[0]) in str(e.value)
    (tmp_path / files[0]).unlink()  # a missing file beside damaged ones: still damaged, the others named
    with pytest.raises(DataNotFound, match="is damaged") as e:
        load_dataset(name, str(tmp_path))
    assert str(tmp_path / files[1]) in str(e.value)
    for rel in files[1:]:
        (tmp_path / rel).unlink()
    with pytest.raises(DataNotFound, match="not found"):  # nothing present: not found, as before
        load_dataset(name, str(tmp_path))


def test_tinyimagenet_folder_as_distributed(tmp_path, monkeypatch):
    import utils.data
    monkeypatch.setattr(utils.data, "TINY_EXPECTED", {"classes": 2, "train": 6, "test": 2})
    tiny_imagenet_folder(tmp_path, ["n02", "n01"], 3, lambda k, i: 40 * k + i, lambda k: 200 + k)
    d = load_dataset("tinyimagenet", str(tmp_path))
    assert d.x_train.shape == (6, 3, 64, 64) and d.x_test.shape == (2, 3, 64, 64)
    # classes are indexed in sorted wnid order: n01 -> 0, n02 -> 1
    assert d.y_test.tolist() == [1, 0]
    assert abs(int(d.x_test[0, 0, 5, 5]) - 200) <= 2 and d.crop_padding == 4
    again = load_dataset("tinyimagenet", str(tmp_path))  # from the cache
    assert torch.equal(again.x_train, d.x_train)


def test_crop_flip_windows_of_padded_image():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, 2, True, torch.Generator().manual_seed(0))
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [pad[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    d = synthetic(n_train=40, n_test=8)
    d.crop_padding, d.flip = 4, True
    a = [y for _, y in train_batches(d, 16, epoch_generator(1, 3))]
    b = [y for _, y in train_batches(d, 16, epoch_generator(1, 3))]
    c = [y for _, y in train_batches(d, 16, epoch_generator(1, 4))]
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not all(torch.equal(u, v) for u, v in zip(a, c))
    assert sorted(torch.cat(a).tolist()) == sorted(d.y_train.tolist())
    xs = [x for x, _ in eval_batches(d, 3)]
    assert sum(len(x) for x in xs) == 8 and 0.0 <= float(torch.cat(xs).min()) and float(torch.cat(xs).max()) <= 1.0
