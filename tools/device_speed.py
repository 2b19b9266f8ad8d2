"""Section 3 of the device check (tools.device_check): speed. AT and PART epochs through the real training loop
(tools.benchmark.bench_epochs) on a synthetic CIFAR-shaped set under each speed setting, the official pipeline's
per-image mask pass, WRN-34-10 on a fraction of an epoch, and the goals those timings answer (GOALS: reported, never
failed; skipped with the reason where the device cannot measure one or its setting was not timed)."""
import contextlib
import io
import time

import torch

from tools.benchmark import bench_epochs, official_image_pass, speed_setting
from utils.batches import to_float
from utils.data import Dataset
from utils.devices import peak_memory_unmeasured, synchronize

# the goals on one H100/H200 (reported with their figures, never failed)
GOALS = {"part_epoch_tf32_s": 10.0, "part_epoch_bf16_s": 5.0, "part_over_at": 1.15, "peak_part_over_at": 1.2,
         "over_official": 10.0}
SETTINGS = ("fp32", "tf32", "fast", "bf16")  # the ResNet-18 settings the full check times
OFFICIAL_IMAGES = 512
WRN_FRACTION = 0.05


def quiet(fn, *args):
    """fn(*args) with its stdout and stderr kept: (result, captured text)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        out = fn(*args)
    return out, buf.getvalue()


def cifar_shaped(n: int, n_test: int = 256, seed: int = 0) -> Dataset:
    """n random CIFAR-shaped uint8 images (crop and flip on, as CIFAR-10), 10 classes: for timing only."""
    g = torch.Generator().manual_seed(seed)
    return Dataset("synthetic", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g), torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8,
                                                                          generator=g),
                   torch.randint(0, 10, (n_test,), generator=g), 10, crop_padding=4, flip=True)


def section_speed(rep, device: torch.device, size: dict) -> None:
    """Time the settings of `size` into `rep` (a tools.device_check.Report): its checks, speed rows and goals."""
    data = cifar_shaped(size["speed_images"]).to(device)
    width = size["width"]
    peak_note = " (process max RSS)" if peak_memory_unmeasured(device) else ""
    for setting in SETTINGS:
        name = f"resnet18 {setting} epochs"
        if setting not in size["settings"]:
            rep.add(3, name, "skipped", reason=_left_out(size))
            continue
        if speed_setting(setting)["amp"] == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            rep.add(3, name, "skipped", reason="this GPU does not support bf16")
            continue

        def check(setting=setting):
            rows, _ = quiet(bench_epochs, "resnet18", width, setting, data, device, size["speed_batch"],
                            size["speed_images"])
            rep.speed.extend(rows)
            at, part = rows
            return "pass", (f"AT {at['epoch_s']:.1f} s, PART {part['epoch_s']:.1f} s per 50k-image epoch "
                            f"(x{part['epoch_s'] / at['epoch_s']:.2f}); peak {at['peak_mem_mb']:.0f} / "
                            f"{part['peak_mem_mb']:.0f} MiB{peak_note}"), f"{at['images']} images timed"
        rep.guard(3, name, check)

    def official():
        from models import build_model
        torch.manual_seed(0)
        model = build_model("resnet18", 10, width).to(device)
        x = to_float(data.x_train[:size["official"]])
        official_image_pass(model, x[:2], 8 / 255, 7 / 255)  # warm-up
        synchronize(device)
        t = time.perf_counter()
        _, by = official_image_pass(model, x, 8 / 255, 7 / 255)
        synchronize(device)
        sec = time.perf_counter() - t
        n = x.shape[0]
        rep.speed.append({"model": "resnet18", "method": "official mask pass", "setting": f"fp32 ({by})",
                          "images": n, "measured_s": round(sec, 2), "epoch_s": round(sec * 50000 / n, 1),
                          "images_per_s": round(n / sec, 1), "peak_mem_mb": None})
        return "pass", f"{sec * 50000 / n:.1f} s per 50k images, one image at a time ({by})", f"{n} images timed"
    rep.guard(3, "official per-image mask pass", official)

    for setting in size["wrn_settings"]:
        def wrn(setting=setting):
            rows, _ = quiet(bench_epochs, "wrn34-10", size["wrn_width"], setting, data, device, size["speed_batch"],
                            size["wrn_images"])
            rep.speed.extend(rows)
            at, part = rows
            return "pass", (f"AT {at['epoch_s']:.1f} s, PART {part['epoch_s']:.1f} s per 50k-image epoch, scaled "
                            f"from {at['images']} images"), f"{at['images'] / 50000:.1%} of an epoch timed"
        rep.guard(3, f"wrn34-10 {setting} epochs", wrn)
    rep.goals = goals(rep.speed, device, size)


def _left_out(size: dict) -> str:
    return f"--quick times {', '.join(size['settings'])} only"


def goals(rows: list, device: torch.device, size: dict) -> list:
    """Every goal of GOALS for the settings the full check times: {name, goal, figure, status: met | not met |
    skipped, met (None when skipped), reason}. A goal is skipped with its reason when the device cannot measure it
    (peak memory off CUDA, `peak_memory_unmeasured`) or when the speed rows lack its setting (left out by --quick,
    or its check failed or was skipped)."""
    def row(method, setting, model="resnet18"):
        return next((r for r in rows if (r["model"], r["method"], r["setting"]) == (model, method, setting)), None)

    def untimed(setting):
        return _left_out(size) if setting not in size["settings"] else \
            f"setting {setting} was not timed (see the check 'resnet18 {setting} epochs')"
    out = []

    def add(name, goal, figure=None, met=None, reason=""):
        out.append({"name": name, "goal": goal, "figure": None if figure is None else round(figure, 3),
                    "status": "skipped" if met is None else "met" if met else "not met", "met": met, "reason": reason})
    for setting, key in (("tf32", "part_epoch_tf32_s"), ("bf16", "part_epoch_bf16_s")):
        r = row("PART", setting)
        if r:
            add(f"PART epoch, {setting} (s)", GOALS[key], r["epoch_s"], r["epoch_s"] <= GOALS[key])
        else:
            add(f"PART epoch, {setting} (s)", GOALS[key], reason=untimed(setting))
    unmeasured = peak_memory_unmeasured(device)
    for setting in SETTINGS:
        at, part = row("AT", setting), row("PART", setting)
        epoch, peak = f"PART / AT epoch, {setting}", f"PART / AT peak memory, {setting}"
        if not (at and part):
            add(epoch, GOALS["part_over_at"], reason=untimed(setting))
            add(peak, GOALS["peak_part_over_at"], reason=unmeasured or untimed(setting))
            continue
        q = part["epoch_s"] / at["epoch_s"]
        add(epoch, GOALS["part_over_at"], q, q <= GOALS["part_over_at"])
        if unmeasured or not (at["peak_mem_mb"] and part["peak_mem_mb"]):
            add(peak, GOALS["peak_part_over_at"], reason=unmeasured or "no peak memory figure")
        else:
            q = part["peak_mem_mb"] / at["peak_mem_mb"]
            add(peak, GOALS["peak_part_over_at"], q, q <= GOALS["peak_part_over_at"])
    official = next((r for r in rows if r["method"] == "official mask pass"), None)
    fp32_at = row("AT", "fp32")
    best = min((r["epoch_s"] for r in rows if r["model"] == "resnet18" and r["method"] == "PART"), default=None)
    name = "official pipeline epoch / our fastest PART epoch"
    if official and fp32_at and best:
        # the official pipeline's epoch: its per-image mask pass plus an fp32 training epoch (ours, as its stand-in)
        q = (official["epoch_s"] + fp32_at["epoch_s"]) / best
        add(name, GOALS["over_official"], q, q >= GOALS["over_official"])
    else:
        add(name, GOALS["over_official"], reason="needs the official mask pass and the fp32 epochs, not all timed")
    return out
