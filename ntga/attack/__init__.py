"""NTGA: projected gradient ascent that poisons a block of training images against an NTK-GP.

Usage::

    from ntga import kernels
    from ntga.attack import AttackConfig, poison_block, one_hot
    from ntga.pixels import to_float

    config = AttackConfig(eps=8 / 255, t=8.0)              # 10 steps of 1.1 * eps / 10
    result = poison_block(kernels.make("cnn"), x_block, y_block, x_target, y_target, config)
    result.x_poison_uint8, result.poisoned_target_acc, result.loss_history

For several blocks or devices use the pure pieces: :func:`make_block_attack`
(the whole attack, jit/vmap/shard_map it), :func:`make_pgd_step` (one jitted
step) and :func:`evaluate_block`. :func:`reference_fgsm_config` reproduces the
reference implementation's effective one-step FGSM.

Modules: ``config`` (AttackConfig), ``block`` (loss, gradient, step, attack),
``labels`` (one-hot targets). The pixel pieces it is built from (ascent
directions, eps-balls, random starts, uint8 <-> float, rounding within the
budget) live in :mod:`ntga.pixels`.
"""

from ntga.attack.block import (
    BlockResult,
    chunk_targets,
    evaluate_block,
    make_block_attack,
    make_evaluate,
    make_pgd_step,
    poison_block,
    target_loss,
    target_loss_and_grad,
)
from ntga.attack.config import AttackConfig, reference_fgsm_config
from ntga.attack.labels import one_hot

__all__ = [
    "AttackConfig",
    "BlockResult",
    "chunk_targets",
    "evaluate_block",
    "make_block_attack",
    "make_evaluate",
    "make_pgd_step",
    "one_hot",
    "poison_block",
    "reference_fgsm_config",
    "target_loss",
    "target_loss_and_grad",
]
