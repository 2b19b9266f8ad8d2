"""The flags a script's constants become (constant name -> type, range and help): SPEC, which utils.config
builds every script's parser from, and tools.flags documents in docs/flags.md."""
import argparse
from dataclasses import dataclass

from models import MODELS

from .cams import CAMS
from .cli import BUDGET, COUNT, POSITIVE, SEED, nonempty, number
from .data import DATASETS
from .evaluate import check_eval_attack
from .mask_rules import RULES
from .mask_sources import MASK_SOURCES

# 1024 gives a ResNet-18 of 2.86e9 parameters (11.4 GB in fp32; counted on the meta device): wider is no model
# one trains here, and its allocation is refused late or not at all (memory overcommit)
MAX_WIDTH = 1024


def eval_attack(text: str) -> str:
    try:
        return check_eval_attack(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass(frozen=True)
class Flag:
    kwargs: dict
    help: str


# constant name -> its flag
SPEC = {
    "DATA": Flag(dict(choices=list(DATASETS)),
                 "data set: cifar10, svhn and tinyimagenet are read from --data-dir (--download fetches the first "
                 "two), cifar10-npz is the .npz file --data-dir names, synthetic is built in (for tests)"),
    "DATA_DIR": Flag(dict(type=nonempty),
                     "data-set root folder, holding cifar-10-batches-py/, SVHN's *_32x32.mat or tiny-imagenet-200/ "
                     "(for cifar10-npz: the .npz file)"),
    "MODEL": Flag(dict(choices=list(MODELS)), "architecture: resnet18 (ResNet-18) or wrn34-10 (WideResNet-34-10)"),
    "WIDTH": Flag(dict(type=number(int, 1, MAX_WIDTH, optional=True)),
                  "none: the standard model; else ResNet-18's first-stage channels (standard 64) or the WRN's widen "
                  "factor (standard 10), smaller for quick CPU runs"),
    "EPOCHS": Flag(dict(type=POSITIVE), "total training epochs, warm-up included"),
    "WARM_UP": Flag(dict(type=COUNT), "epochs of the plain method (AT, TRADES or MART) at the full --epsilon before "
                                      "masks are used; at most --epochs"),
    "BATCH_SIZE": Flag(dict(type=POSITIVE), "global training batch in images (split evenly across torchrun processes)"),
    "LR": Flag(dict(type=number(float, 0, lo_open=True)), "initial SGD learning rate"),
    "LR_MILESTONES": Flag(dict(type=POSITIVE, nargs="*", metavar="EPOCH"),
                          "global epochs (1-based) from which lr is x0.1, x0.01, ...; none: the last epoch only (the "
                          "official schedule at 80 epochs); given with no epoch: a constant lr. config.json records "
                          "the resolved list"),
    "MOMENTUM": Flag(dict(type=number(float, 0, 1, hi_open=True)), "SGD momentum"),
    "WEIGHT_DECAY": Flag(dict(type=number(float, 0, optional=True)),
                         "SGD weight decay; none: the data set's (2e-4; 3.5e-3 on SVHN)"),
    "EPSILON": Flag(dict(type=BUDGET), "L-inf budget (pixels in [0, 1]) of the important pixels, and of the warm-up "
                                       "and the --no-mask baseline"),
    "LOW_EPSILON": Flag(dict(type=BUDGET), "L-inf budget of the other pixels; at most --epsilon"),
    "STEP_SIZE": Flag(dict(type=number(float, 0, 1, lo_open=True, optional=True)),
                      "step size of the training and evaluation attacks; none: the data set's (2/255; 1/255 on SVHN)"),
    "NUM_STEPS": Flag(dict(type=COUNT), "steps of the training attack (the evaluation's attacks have their own)"),
    "BETA": Flag(dict(type=number(float, 0)), "TRADES / MART regularisation weight"),
    "ATTACK": Flag(dict(), "training attack: pgd, or mma (minimum-margin attack, k = 3)"),
    "CAM": Flag(dict(choices=list(CAMS)), "class activation map method that ranks the pixels"),
    "MASK_RULE": Flag(dict(choices=list(RULES)),
                      "how a CAM becomes budgets: official (the official code's jet-coloured, per-channel rule) or "
                      "monotonic (the paper's text: pixels over one std above the mean keep --epsilon); "
                      "utils/mask_rules.py"),
    "MASK_SOURCE": Flag(dict(choices=list(MASK_SOURCES)),
                        "where the budgets come from after warm-up: cam (each batch's own CAM masks), official (the "
                        "official code's separate mask pass), permuted (own masks on the wrong images: the control), "
                        "regions (fixed quadrant budgets, no CAM); utils/mask_sources.py"),
    "MASK_REFRESH": Flag(dict(type=POSITIVE), "official source: recompute the masks every N epochs (the official "
                                              "code's --save-weights)"),
    "REGION_EPS": Flag(dict(type=BUDGET, nargs=4, metavar=("UL", "UR", "BR", "BL")),
                       "regions source: the budget of the upper-left, upper-right, bottom-right and bottom-left "
                       "quadrant (may exceed --epsilon)"),
    "MASK": Flag(dict(action=argparse.BooleanOptionalAction),
                 "--no-mask trains the plain baseline (AT, TRADES or MART) with the same code"),
    "SEED": Flag(dict(type=SEED), "seeds the model's initialisation, the data order, augmentation and attacks (the "
                                  "per-epoch seeds derived from it wrap into torch's range)"),
}
