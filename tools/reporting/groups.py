"""Rows of the report: runs grouped by their whole configuration (every setting but the seed and the run-control
flags), one table per (data set, model); each row's label (its method and the settings that tell it apart), its
unmasked baseline, and finding a row by its label or a part of one."""
import json

from utils.errors import UsageError
from utils.evaluate import column_value
from utils.identity import mask_only_keys
from utils.methods import labels
from utils.stats import mean_std
from utils.units import fraction_text

from .records import budget_stats

ORDER = list(labels())  # AT, PART, MMA, PART-MMA, TRADES, ...
FIXED = ("variant", "mask", "attack", "data", "model")  # said by the table's title and the method name
LABELS = {name: (baseline, masked) for name, (_, _, masked, baseline) in labels().items()}  # -> (baseline, masked?)
QUADRANTS = ("ul", "ur", "br", "bl")  # the order of region_eps (utils/mask_sources.py)


def setting_text(key, v) -> str:
    """A setting as a label shows it; region budgets name their quadrants in 1/255: ul6,ur12,br12,bl12."""
    if key == "region_eps" and isinstance(v, list) and len(v) == 4 and \
            all(abs(e * 255 - round(e * 255)) < 1e-9 for e in v):
        return ",".join(f"{q}{round(e * 255)}" for q, e in zip(QUADRANTS, v))
    return value_text(v)


def value_text(v) -> str:
    """A setting's value as text: fractions as utils.units writes them, lists space-separated."""
    if isinstance(v, list):
        return " ".join(value_text(x) for x in v)
    return fraction_text(v) if isinstance(v, float) else str(v)


class Group:
    """The runs of one configuration. `masked` and `core` (the settings apart from the mask ones) pair a masked
    group with its baseline."""

    def __init__(self, settings, method):
        self.settings, self.method, self.runs, self.label = settings, method, [], method
        self.masked = settings["mask"] if "mask" in settings else LABELS.get(method, (None, False))[1]
        only_masked = mask_only_keys(settings.get("variant"))
        self.core = {k: v for k, v in settings.items() if k not in only_masked and k not in ("mask", "method")}

    def stat(self, col):
        """(mean, sample std, n) of column `col` over the group's runs that have it."""
        return mean_std([column_value(r, col) for r in self.runs])

    def budget(self, key):
        """(mean, sample std, n) of the runs' `budget_stats` `key` (budget_mean or eps_share)."""
        return mean_std([budget_stats(r)[key] for r in self.runs])


def group_runs(runs, warn):
    """{(data, model): [Group, ...]} with one run per seed in each group, labelled by what differs."""
    tables = {}
    for r in sorted(runs, key=lambda r: r["mtime"]):
        key = json.dumps(identity(r["settings"], r), sort_keys=True, default=str)
        groups = tables.setdefault((r.get("data"), r.get("model")), {})
        g = groups.setdefault(key, Group(r["settings"], r.get("method")))
        twin = next((o for o in g.runs if o.get("seed") == r.get("seed")), None)
        if twin is not None:
            warn(f"two runs of one configuration with seed {r.get('seed')}: {twin['folder']} and {r['folder']}; "
                 f"only the newer, {r['folder']}, is used")
            g.runs.remove(twin)
        g.runs.append(r)
    out = {}
    for table, groups in tables.items():
        gs = list(groups.values())
        label_groups(gs)
        out[table] = sorted(gs, key=lambda g: (ORDER.index(g.method) if g.method in ORDER else len(ORDER), g.label))
    return out


def identity(settings: dict, run: dict) -> dict:
    """What tells a run's group apart: its settings, and for a record without a config the test-set sizes it
    names (a config's settings hold them already), so that runs on other test images are never averaged."""
    return {"n_eval": run.get("n_eval"), "n_eval_aa": run.get("n_eval_aa"), **settings}


def label_groups(groups):
    """Label each group: its method, plus `key=value` for each setting whose values differ among the groups that
    have it, where the group's value is not the one most of those groups share (all values when none is). Groups
    this leaves alike (a setting only one of them has, e.g. the regions source beside plain AT) get every setting
    that tells them apart, on the groups that have it: no two groups share a label."""
    keys = sorted({k for g in groups for k in g.settings} - set(FIXED) - {"method"})
    shown = {g: [] for g in map(id, groups)}
    for k in keys:
        values = [setting_text(k, g.settings[k]) for g in groups if k in g.settings]
        if len(set(values)) < 2:
            continue
        counts = sorted(((values.count(v), v) for v in set(values)), reverse=True)
        modal = counts[0][1] if counts[0][0] > counts[1][0] else None
        for g in groups:
            if k in g.settings and setting_text(k, g.settings[k]) != modal:
                shown[id(g)].append(f"{k}={setting_text(k, g.settings[k])}")

    def name(g):
        return g.method + (f" ({', '.join(shown[id(g)])})" if shown[id(g)] else "")

    for fixed in (False, True):  # the settings a method name says (FIXED) only where the others do not suffice
        alike = {}
        for g in groups:
            alike.setdefault(name(g), []).append(g)
        for same in (gs for gs in alike.values() if len(gs) > 1):
            ids = [identity(g.settings, g.runs[0]) for g in same]
            for k in sorted({k for i in ids for k in i if (k in FIXED) == fixed} - {"method"}):
                texts = [setting_text(k, i[k]) if k in i else None for i in ids]
                if len(set(texts)) > 1:
                    for g, t in zip(same, texts):
                        if t is not None and f"{k}={t}" not in shown[id(g)]:
                            shown[id(g)].append(f"{k}={t}")
    for g in groups:
        g.label = name(g)


def baseline_of(group, groups):
    """The unmasked group of the same method with the same settings apart from the mask ones, if any."""
    if not group.masked:
        return None
    name = LABELS.get(group.method, (None,))[0]
    return next((g for g in groups if not g.masked and g.method == name and g.core == group.core), None)


def masked_name(baseline: Group) -> str:
    """The masked method's name for a baseline group (PART for AT, PART-T for TRADES, ...)."""
    return next((name for name, (base, masked) in LABELS.items() if masked and base == baseline.method), "masked")


def find_group(groups, name):
    """The group labelled `name`, or the only one whose label contains it."""
    exact = [g for g in groups if g.label == name]
    if exact:
        return exact[0]
    part = [g for g in groups if name in g.label]
    return part[0] if len(part) == 1 else None


def check_diffs(tables, diffs) -> None:
    """Raise UsageError for a --diff side that is part of several rows' labels (and no row's whole label) in a
    table, for a --diff whose sides name one row, and for a side that names no row in any table (the message
    lists the labels there are). A side that names a row in one table but not in another is shown as missing in
    the other (that row's runs may not have finished there)."""
    labels = list(dict.fromkeys(g.label for groups in tables.values() for g in groups))
    for name in dict.fromkeys(n for pair in diffs for n in pair):
        if not any(name in label for label in labels):
            raise UsageError(f"--diff {name!r} names no row; the rows are: " +
                             ("; ".join(labels) if labels else "none (no finished run)"))
    for groups in tables.values():
        for a_name, b_name in diffs:
            for name in (a_name, b_name):
                part = [g.label for g in groups if name in g.label]
                if len(part) > 1 and name not in part:
                    raise UsageError(f"--diff {name!r} is part of {len(part)} row labels ({'; '.join(part)}); give "
                                     f"one whole label")
            a = find_group(groups, a_name)
            if a is not None and a is find_group(groups, b_name):
                raise UsageError(f"--diff {a_name!r} {b_name!r}: both name the row {a.label!r}; a row minus itself is 0")


ATTACK_KEYS = ("eval_epsilon", "step_size")  # what a run's evaluation attacks take from its config


def diff_warnings(tables, diffs) -> list[str]:
    """One line for each --diff whose rows were evaluated on different numbers of test images (n_eval, n_eval_aa as
    their records say): their difference then mixes which images were drawn with what was trained; and one for
    each whose rows were attacked with a different radius or PGD step (eval_epsilon, step_size): their difference
    then mixes the attacks with what was trained."""
    out = []
    for (data, model), groups in tables.items():
        for a_name, b_name in diffs:
            a, b = find_group(groups, a_name), find_group(groups, b_name)
            if a is None or b is None:
                continue
            def differ(keys, show=str):
                return [f"{k} {show(a.settings[k])} and {show(b.settings[k])}" for k in keys
                        if k in a.settings and k in b.settings and a.settings[k] != b.settings[k]]
            where = f"--diff {a.label!r} {b.label!r} ({data}, {model})"
            images, attacks = differ(("n_eval", "n_eval_aa")), differ(ATTACK_KEYS, fraction_text)
            if images:
                out.append(f"{where}: the rows were evaluated on different test images ({'; '.join(images)}), so "
                           f"their difference also holds which images each drew")
            if attacks:
                out.append(f"{where}: the rows were attacked with different settings ({'; '.join(attacks)}), so "
                           f"their difference also holds the attacks")
    return out

