"""Breakers: defenses that try to make availability-poisoned data learnable again.

Look one up by its command-line name in :data:`BREAKERS`, or parse a
``--breakers`` value with :func:`parse_breakers` (syntax in
:mod:`defenses.breakers.registry`)::

    from defenses.breakers import BREAKERS, parse_breakers
    jpeg = BREAKERS["jpeg"](quality=10)
    x_train, y_train = jpeg.prepare(x_train, y_train, key)   # before training
    for breaker in parse_breakers("none,grayscale+jpeg,ueraser"):
        x, y = breaker.prepare(x_train, y_train, key)
        hooks = breaker.hooks(num_classes)                   # ntga.train.TrainHooks

Modules: squeeze (grayscale, jpeg, bdr, blur), augment (cutout, mixup,
cutmix), ueraser, adversarial (PGD), projection (orthogonal projection),
losses (APL), hooks (merging TrainHooks of a composition), base (option,
breaker, factory, composition), registry (BREAKERS, parser).
"""

from defenses.breakers.base import (
    TOUCHES,
    TOUCHES_BATCHES,
    TOUCHES_IMAGES,
    TOUCHES_LOSS,
    TOUCHES_PROCEDURE,
    Breaker,
    BreakerFactory,
    Option,
    compose,
)
from defenses.breakers.registry import BREAKERS, describe_breaker, describe_breakers, parse_breaker, parse_breakers

__all__ = [
    "BREAKERS",
    "Breaker",
    "BreakerFactory",
    "Option",
    "TOUCHES",
    "TOUCHES_BATCHES",
    "TOUCHES_IMAGES",
    "TOUCHES_LOSS",
    "TOUCHES_PROCEDURE",
    "compose",
    "describe_breaker",
    "describe_breakers",
    "parse_breaker",
    "parse_breakers",
]
