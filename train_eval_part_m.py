"""PART-M: the MART loss with pixel-reweighted inner maximisation, after a MART warm-up.

Edit the constants below, or override any of them with its flag (`--warm-up 10`, `--epsilon 8/255`);
`python train_eval_part_m.py --help` lists them all. `--no-mask` trains plain MART with the same code.
"""
DATA = "cifar10"          # cifar10 | svhn | tinyimagenet | cifar10-npz | synthetic
DATA_DIR = "data"         # data-set root (for cifar10-npz: the .npz file)
MODEL = "resnet18"        # resnet18 | wrn34-10
WIDTH = None              # None: the standard model; smaller for quick CPU runs
EPOCHS = 80               # warm-up included
WARM_UP = 20              # epochs of plain MART at full eps before masks are used
BATCH_SIZE = 128
LR = 0.01
LR_MILESTONES = None      # None: lr x0.1 for the last epoch (the official schedule at 80 epochs)
MOMENTUM = 0.9
WEIGHT_DECAY = None       # None: 2e-4 (3.5e-3 on SVHN)
EPSILON = 8 / 255         # budget of important pixels
LOW_EPSILON = 7 / 255     # budget of the others
STEP_SIZE = None          # None: 2/255 (1/255 on SVHN)
NUM_STEPS = 10
BETA = 6.0                # MART regularisation weight
CAM = "gradcam"           # gradcam | xgradcam | layercam
MASK_RULE = "official"    # official | monotonic (see docs/method.md)
MASK_SOURCE = "cam"       # cam | official | permuted | regions (see docs/method.md)
MASK_REFRESH = 1          # official source: recompute the masks every N epochs
REGION_EPS = (6 / 255, 12 / 255, 12 / 255, 12 / 255)  # regions source: budgets of UL, UR, BR, BL quadrants
MASK = True               # False: plain MART (the paper's baseline row)
SEED = 1

if __name__ == "__main__":
    import sys

    from utils import main
    sys.exit(main("part_m", {k: v for k, v in dict(globals()).items() if k.isupper()}))
