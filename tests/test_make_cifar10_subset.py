"""tools/make_cifar10_subset.py: the studies' .npz from CIFAR-10 python batches, its fingerprint, and bad input."""
import glob
import json
import os
import pickle

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_NPZ
from tools import make_cifar10_subset as tool
from utils.data import load_dataset

STUDIES = os.path.join(ROOT, "docs", "studies")


def images(batch: int, n: int) -> np.ndarray:
    """n distinct HWC images of one batch: every pixel of every channel differs, so a wrong transpose shows."""
    x = np.arange(n * 32 * 32 * 3).reshape(n, 32, 32, 3) * 7 + batch * 31
    return (x % 251).astype(np.uint8)


def write_batches(folder, n: int = 4, labels=lambda b, i: (b + i) % 10, skip=()):
    """CIFAR-10 python batches as distributed: pickled dicts of b'data' (n, 3072) uint8 rows of R, G, B planes and
    b'labels' (a list). Batch b (0-4: data_batch_1..5, 5: test_batch) holds images(b, n)."""
    folder = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for b, name in enumerate(tool.TRAIN_BATCHES + (tool.TEST_BATCH,)):
        if name in skip:
            continue
        rows = images(b, n).transpose(0, 3, 1, 2).reshape(n, 3072)  # HWC -> the batches' CHW rows
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [labels(b, i) for i in range(n)], b"data": rows,
                         b"filenames": [b"x.png"] * n}, f)
    return folder


def studies_with(root, fingerprint, runs=2):
    for i in range(runs):
        d = root / "study" / "cifar10-npz-resnet18" / f"AT-seed{i}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"data": "cifar10-npz", "data_fingerprint": fingerprint}))
    return str(root)


def test_the_subset_is_the_first_images_of_each_batch_in_order_hwc(tmp_path, capsys):
    write_batches(tmp_path / "cifar", n=4)
    out = tmp_path / "subset.npz"
    code = tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(out), "--per-batch", "3",
                      "--studies", str(tmp_path)])
    assert code == 0, capsys.readouterr().err  # no record to compare with
    with np.load(out) as z:
        assert z.files == ["x_train", "y_train", "x_test", "y_test"]
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (15, 32, 32, 3)
        assert z["y_train"].dtype == np.int64 and z["y_test"].dtype == np.int64
        np.testing.assert_array_equal(z["x_train"], np.concatenate([images(b, 4)[:3] for b in range(5)]))
        np.testing.assert_array_equal(z["y_train"], [(b + i) % 10 for b in range(5) for i in range(3)])
        np.testing.assert_array_equal(z["x_test"], images(5, 4)[:3])
        np.testing.assert_array_equal(z["y_test"], [(5 + i) % 10 for i in range(3)])
    fp = load_dataset("cifar10-npz", str(out)).fingerprint()
    assert f"fingerprint {fp}: no study record" in capsys.readouterr().out
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []
    # the folder holding cifar-10-batches-py, or that folder itself
    again = tmp_path / "again.npz"
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar" / "cifar-10-batches-py"), "--out", str(again),
                      "--per-batch", "3", "--studies", str(tmp_path)]) == 0
    assert load_dataset("cifar10-npz", str(again)).fingerprint() == fp


def test_the_fingerprint_is_compared_with_the_studies_records(tmp_path, capsys):
    write_batches(tmp_path / "cifar", n=3)
    first = tmp_path / "a.npz"
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(first), "--per-batch", "3",
                      "--studies", str(tmp_path / "none")]) == 2  # not a folder
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(first), "--per-batch", "3"]) == 1
    text = capsys.readouterr()
    fp = load_dataset("cifar10-npz", str(first)).fingerprint()
    recorded = tool.recorded_fingerprints(STUDIES)
    assert f"fingerprint {fp}: differs from the one recorded by the studies in docs/studies" in text.out
    assert all(f"{k} ({n} runs)" in text.out for k, n in recorded.items())
    same = studies_with(tmp_path / "same", fp)
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(first), "--per-batch", "3",
                      "--studies", same, "--overwrite"]) == 0
    assert f"fingerprint {fp}: equals the one recorded by the studies in {same} (2 runs)" in capsys.readouterr().out
    other = studies_with(tmp_path / "other", "0123456789abcdef", runs=1)
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(first), "--per-batch", "3",
                      "--studies", other, "--overwrite"]) == 1
    assert f"differs from the one recorded by the studies in {other}: 0123456789abcdef (1 run)" in \
        capsys.readouterr().out


def test_the_default_is_the_studies_1017_images_per_batch():
    args = tool.build_parser().parse_args(["--cifar-dir", "d", "--out", "o.npz"])
    assert args.per_batch == 1017 and not args.overwrite


def _malformed_pickle(folder):
    with open(os.path.join(folder, "data_batch_2"), "wb") as f:
        f.write(b"\x80\x04not a pickle at all")


def _wrong_shape(folder):
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        pickle.dump({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}, f)


def _float_data(folder):
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}, f)


def _bad_labels(folder):
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, f)


def _too_few_labels(folder):
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, f)


def _not_a_dict(folder):
    with open(os.path.join(folder, "data_batch_5"), "wb") as f:
        pickle.dump([1, 2, 3], f)


def _a_folder(folder):
    os.remove(os.path.join(folder, "data_batch_3"))
    os.mkdir(os.path.join(folder, "data_batch_3"))


@pytest.mark.parametrize("spoil, word", [
    (lambda folder: os.remove(os.path.join(folder, "data_batch_4")), "data_batch_4 is missing"),
    (_malformed_pickle, "data_batch_2 is not a CIFAR-10 python batch"),
    (_wrong_shape, "b'data' must be uint8 (N, 3072)"),
    (_float_data, "got float32 (3, 3072)"),
    (_bad_labels, "must be in [0, 10)"),
    (_too_few_labels, "must be 3 integer labels"),
    (_not_a_dict, "a pickled list, not a dict"),
    (_a_folder, "data_batch_3 is a folder"),
])
def test_bad_batches_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, spoil, word):
    spoil(write_batches(tmp_path / "cifar", n=3))
    out = tmp_path / "out" / "subset.npz"
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(out), "--per-batch", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and word in err[0], err
    assert not out.exists() and not glob.glob(str(tmp_path / "out" / "*"))


def test_other_bad_input_exits_2_with_one_line(tmp_path, capsys):
    write_batches(tmp_path / "cifar", n=3)
    out = tmp_path / "subset.npz"
    out.write_bytes(b"keep me")
    cases = [
        (["--cifar-dir", str(tmp_path / "cifar"), "--out", str(out), "--per-batch", "3"], "exists; give --overwrite"),
        (["--cifar-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "n.npz")], "is not a folder"),
        (["--cifar-dir", str(tmp_path / "cifar"), "--out", str(tmp_path / "n.npz")], "fewer than the 1017 asked"),
        (["--cifar-dir", str(tmp_path / "cifar"), "--out", str(tmp_path)], "is a folder"),
        (["--cifar-dir", str(tmp_path / "cifar"), "--out", str(tmp_path / "new") + os.sep, "--per-batch", "3"],
         "is a folder"),
        (["--cifar-dir", str(tmp_path / "cifar"), "--out", str(tmp_path / "n.npz"), "--per-batch", "0"], "--per-batch"),
        (["--out", str(tmp_path / "n.npz")], "--cifar-dir"),
    ]
    for argv, word in cases:
        assert tool.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and word in err[0], (argv, err)
    assert out.read_bytes() == b"keep me" and not (tmp_path / "n.npz").exists() and not (tmp_path / "new").exists()


def test_a_record_that_cannot_be_parsed_is_not_counted_and_stops_nothing(tmp_path, capsys):
    """The studies' records are read before the file is written; one too deeply nested to parse is skipped like
    any unreadable one, and the others still count."""
    write_batches(tmp_path / "cifar", n=3)
    out = tmp_path / "subset.npz"
    assert tool.main(["--cifar-dir", str(tmp_path / "cifar"), "--out", str(out), "--per-batch", "3"]) in (0, 1)
    fingerprint = load_dataset("cifar10-npz", str(out)).fingerprint()
    studies = studies_with(tmp_path / "s", fingerprint)
    deep = tmp_path / "s" / "study" / "cifar10-npz-resnet18" / "AT-seed9"
    deep.mkdir()
    (deep / "config.json").write_text("[" * 100000)
    capsys.readouterr()
    argv = ["--cifar-dir", str(tmp_path / "cifar"), "--out", str(out), "--per-batch", "3", "--overwrite"]
    assert tool.main([*argv, "--studies", studies]) == 0
    assert "equals the one recorded by the studies" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.isfile(SHARED_NPZ), reason="the shared CIFAR-10 subset is absent")
def test_the_shared_subset_has_the_fingerprint_the_studies_record():
    recorded = tool.recorded_fingerprints(STUDIES)
    assert len(recorded) == 1 and sum(recorded.values()) >= 1
    assert load_dataset("cifar10-npz", SHARED_NPZ).fingerprint() == next(iter(recorded))


@pytest.mark.skipif(not os.path.isfile(SHARED_NPZ), reason="the shared CIFAR-10 subset is absent")
def test_batches_holding_the_shared_subset_give_it_back(tmp_path, capsys):
    """Batches of 1017 images each written from the shared file (HWC -> the batches' CHW rows) give back the same
    arrays, and so the studies' fingerprint, with the default --per-batch."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with np.load(SHARED_NPZ) as z:
        shared = {k: z[k] for k in z.files}
    parts = [(name, shared["x_train"][i * 1017:(i + 1) * 1017], shared["y_train"][i * 1017:(i + 1) * 1017])
             for i, name in enumerate(tool.TRAIN_BATCHES)] + [(tool.TEST_BATCH, shared["x_test"], shared["y_test"])]
    for name, x, y in parts:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072), b"labels": y.tolist()}, f)
    out = tmp_path / "rebuilt.npz"
    assert tool.main(["--cifar-dir", str(tmp_path), "--out", str(out)]) == 0
    assert "equals the one recorded by the studies in docs/studies" in capsys.readouterr().out
    with np.load(out) as z:
        assert z.files == list(shared)
        for k, v in shared.items():
            assert z[k].dtype == v.dtype
            np.testing.assert_array_equal(z[k], v)
