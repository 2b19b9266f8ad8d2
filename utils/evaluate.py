"""The robust evaluation suite: natural, PGD-20, MMA and AutoAttack accuracy, as a JSON record and table."""
import platform
import time

import torch

from attacks import autoattack, autoattack_version, mma, pgd

from .data import Dataset, eval_batches, to_float

COLUMNS = (("natural", "Natural"), ("pgd20", "PGD-20"), ("mma", "MMA"), ("aa", "AA"))


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("torchvision", "numpy", "grad-cam"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["autoattack"] = autoattack_version()
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return out


def evaluate(model: torch.nn.Module, data: Dataset, *, eps: float = 8 / 255, step_size: float = 2 / 255,
             steps: int = 20, attacks=("natural", "pgd20", "mma", "aa"), n_eval: int = 0, n_eval_aa: int = 0,
             batch_size: int = 256, seed: int = 0, progress: bool = False) -> dict:
    """Accuracy in percent on the first `n_eval` test images (all when 0) under each of `attacks`:
    natural; PGD-20 and MMA (k=3, `steps` steps of `step_size`, random start); AutoAttack standard, on the
    first `n_eval_aa` images (0: the same n_eval images; AA is by far the most expensive).
    Returns {'natural', 'pgd20', 'mma', 'aa' (None when not run), 'n_eval', 'n_eval_aa', 'n_test', 'time_s'}.
    The model's mode is left as it was; the global RNG is seeded with `seed` first (repeatable)."""
    from tqdm import tqdm
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_test = data.x_test.shape[0]
    n = n_test if not n_eval else min(n_eval, n_test)
    n_aa = n if not n_eval_aa else min(n_eval_aa, n_test)
    correct = {a: 0 for a in attacks}
    times = {a: 0.0 for a in attacks}

    def timed(name, fn):
        t = time.time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name] += time.time() - t
        return out

    try:
        batches = eval_batches(data, batch_size, n)
        for x, y in tqdm(batches, total=-(-n // batch_size), desc="eval", disable=None if progress else True, leave=False):
            x, y = x.to(device), y.to(device)
            if "natural" in attacks:
                with torch.no_grad():
                    correct["natural"] += timed("natural", lambda: (model(x).argmax(1) == y).sum())
            for name, attack in (("pgd20", pgd), ("mma", mma)):
                if name in attacks:
                    xa = timed(name, lambda: attack(model, x, y, eps, step_size, steps))
                    with torch.no_grad():
                        correct[name] += (model(xa).argmax(1) == y).sum()
        if "aa" in attacks:
            x = to_float(data.x_test[:n_aa]).to(device)
            y = data.y_test[:n_aa].to(device)
            num_classes = data.num_classes
            xa = timed("aa", lambda: autoattack(model, x, y, eps, num_classes=num_classes, batch_size=batch_size,
                                                seed=seed))
            with torch.no_grad():
                correct["aa"] = sum((model(xa[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum()
                                    for i in range(0, n_aa, batch_size))
    finally:
        model.train(was_training)
    count = {"aa": n_aa}
    result = {name: (100.0 * int(correct[name]) / count.get(name, n) if name in attacks else None)
              for name, _ in COLUMNS}
    result.update(n_eval=n, n_eval_aa=n_aa if "aa" in attacks else None, n_test=n_test, time_s={k: round(v, 2) for k, v in times.items()})
    return result


def markdown_table(record: dict, label: str | None = None) -> str:
    """One-row markdown table in the paper's column order: Natural | PGD-20 | MMA | AA ('-' if not run)."""
    head = ([("Method", label)] if label else []) + [(title, record.get(key)) for key, title in COLUMNS]
    cells = [v if isinstance(v, str) else ("-" if v is None else f"{v:.2f}") for _, v in head]
    return ("| " + " | ".join(t for t, _ in head) + " |\n|" + "---|" * len(head) + "\n| "
            + " | ".join(cells) + " |\n")
