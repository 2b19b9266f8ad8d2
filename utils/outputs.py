"""What a run or an evaluation writes at its end: the evaluation record (`write_evaluation`: <name>.json and .md, the
per-image arrays, AutoAttack's log) and the mask figure (`write_mask_figure`)."""
import os
import time

import torch

from .batches import to_float
from .data import Dataset
from .engine import Run
from .corruptions import evaluate_corruptions
from .evaluate import evaluate, make_record, markdown_table, per_image_arrays, per_image_name
from .figures import save_mask_figure
from .runs import save_json, save_npz, save_text


def write_evaluation(cfg: dict, model: torch.nn.Module, data: Dataset, log, folder: str, name: str,
                     checkpoint: str | None, epoch: int | None, extra: dict | None = None) -> dict:
    """Run the evaluation suite as configured and write <folder>/<name>.json (with `extra`'s fields) and .md, the
    per-image record (`per_image_name(name)`) and, with AutoAttack, its log (`aa_log_name(name)`, this evaluation's
    alone). `epoch`: the epoch the checkpoint holds."""
    aa_log = os.path.join(folder, aa_log_name(name))
    aa_tmp = f"{aa_log}.tmp.{os.getpid()}"  # AutoAttack appends: this evaluation's log replaces the old one at the end
    t = time.time()
    try:
        res = evaluate(model, data, attacks=tuple(cfg["eval_attacks"]), eps=cfg["eval_epsilon"],
                       step_size=cfg["step_size"], n_eval=cfg["n_eval"], n_eval_aa=cfg.get("n_eval_aa", 0),
                       batch_size=cfg["eval_batch_size"], seed=cfg["seed"], cfg=cfg, aa_log=aa_tmp, log=log,
                       progress=True)
        if cfg.get("eval_corruptions"):
            res["corruptions"] = evaluate_corruptions(model, cfg["eval_corruptions"], cfg["n_eval"],
                                                      cfg["eval_batch_size"], log)
    except BaseException:
        if os.path.exists(aa_tmp):
            os.remove(aa_tmp)
        raise
    record = make_record(cfg, res, checkpoint, time.time() - t, next(model.parameters()).device, epoch)
    record.update(extra or {})
    aa_note = f" (AA on the first {res['n_eval_aa']})" if res["n_eval_aa"] not in (None, res["n_eval"]) else ""
    log.info("evaluation on %d of %d test images%s:\n%s", res["n_eval"], res["n_test"], aa_note,
             markdown_table(record, record["method"]))
    record["per_image_file"] = per_image_name(name)
    save_npz(os.path.join(folder, record["per_image_file"]), per_image_arrays(res, data, cfg.get("data_fingerprint")))
    if os.path.exists(aa_tmp):
        os.replace(aa_tmp, aa_log)
    elif os.path.exists(aa_log):  # an earlier evaluation's, which this record does not have
        os.remove(aa_log)
    save_json(os.path.join(folder, f"{name}.json"), record)
    save_text(os.path.join(folder, f"{name}.md"), markdown_table(record, record["method"]))
    log.info("wrote %s", os.path.join(folder, f"{name}.json"))
    return record


def aa_log_name(name: str) -> str:
    """AutoAttack's log beside the record <name>.json: aa_log.txt for a run's results, <name>_aa_log.txt for an
    --eval-only record."""
    return "aa_log.txt" if name == "results" else f"{name}_aa_log.txt"


def write_mask_figure(run: Run, n: int = 8) -> None:
    cfg = run.cfg
    x = to_float(run.data.x_test[:n]).to(run.device)
    cam, budget = run.source.preview(run.model, x)
    note = "" if cfg["mask"] else " (not used: this run trained with --no-mask)"
    save_mask_figure(os.path.join(run.out, "mask.png"), x, cam, budget, cfg["epsilon"], cfg["low_epsilon"],
                     f"{cfg['method']}, mask source '{cfg['mask_source']}'{note}: budgets of the first {n} test images")
