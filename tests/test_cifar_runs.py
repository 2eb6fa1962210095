"""The CIFAR benchmark's command line: flags land in the run's configuration as their help says."""

from __future__ import annotations

from benchmarks.cifar_runs import build_config, build_parser


def _config(*flags: str):
    return build_config(build_parser().parse_args(["--model", "resnet20", "--pretrained", *flags]))


def test_train_seed_seeds_the_training_and_keeps_the_split_of_the_shipped_weights():
    """A second seed of a pretrained run must change the noise and the data order, never the validation split: the
    shipped dense weights were trained on seed 0's split (the pipeline refuses another)."""
    default = _config("--finetune-epochs", "5")
    seeded = _config("--finetune-epochs", "5", "--train-seed", "1")
    assert default.bayes.seed == default.finetune.seed == 0
    assert seeded.bayes.seed == seeded.finetune.seed == 1
    assert seeded.seed == default.seed == 0
    assert seeded.bayes.epochs == default.bayes.epochs and seeded.finetune.epochs == 5


def test_fine_tuning_flags_reach_the_fine_tuning_config():
    config = _config("--finetune-epochs", "40", "--finetune-lr", "0.01", "--finetune-optimizer", "sgd",
                     "--finetune-weight-decay", "5e-4", "--distill", "0.9", "--group-kl-scale", "10")
    assert (config.finetune.epochs, config.finetune.lr, config.finetune.optimizer) == (40, 0.01, "sgd")
    assert config.finetune.weight_decay == 5e-4 and config.finetune.distill == 0.9
    assert config.finetune.augment == "crop_flip" and config.prior["group_kl_scale"] == 10
