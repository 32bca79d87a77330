"""One training and evaluation loop for every victim in ``ntga.models``.

``train_and_evaluate(model_name, x_train, y_train, x_test, y_test, config, key)``
trains the named victim on (possibly poisoned) training images and reports the
test accuracy after every epoch. ``train_many_seeds`` repeats it for several
keys, vmapping the seeds for victims without batch norm or dropout (fnn,
fnn-relu) and looping otherwise.

Data handling
    Images are uint8 [0, 255] or floats in [0, 1], shaped [N, H, W, C] ([N, H, W]
    means C = 1), H, W >= 8. Both sets live on the device once; each step gathers
    its batch by index. Per-channel mean/std come from ``x_train`` as given (the
    poisoned data when poisoned, as an unsuspecting trainer would compute them);
    the test set is standardised with the same statistics. Each epoch shuffles
    with ``fold_in(shuffle_key, epoch)`` and **drops the last partial batch**
    (``N // batch_size`` steps), so every step has one static shape and one
    compilation; the test set is evaluated in full (padded batches, masked).

Randomness
    ``key`` is split once into init / shuffle / step keys. Step ``s`` uses
    ``fold_in(step_key, s)``, split into the dropout, augmentation, transform
    and adversarial keys, so a run is a pure function of its key.

Inside one jitted step (the hook contract the breakers code against)
    1. ``x`` = raw batch in pixel units, float32 [B, H, W, C] in [0, 1];
       ``y`` = int labels [B].
    2. If augmentation is on: random crop (zero padding 4 px per 32) + flip.
    3. ``hooks.batch_transform(key, x, y) -> (x, y)``: any pure JAX function.
       ``x`` must keep its shape [B, H, W, C] (float32, pixel units; values
       outside [0, 1] are allowed, nothing clips). ``y`` may come back as int
       labels [B] or as soft targets float [B, k] whose rows sum to 1
       (mixup / cutmix).
    4. ``hooks.adversarial(key, input_loss, x, y) -> x``: for adversarial
       training (PGD) and UEraser-max (loss maximised over K augmentation
       draws). ``input_loss(x, y, train=True) -> [B]`` is the per-example
       training loss of the *current* parameters at pixel-unit images ``x``
       (standardised inside) and targets ``y`` (int [B] or soft [B, k]),
       differentiable in ``x``: ``jax.grad(lambda x: input_loss(x, y).sum())``.
       With ``train=True`` batch norm normalises with the statistics of the
       given batch (running averages are not updated) and dropout uses the
       step's dropout key, i.e. the attack sees the same network the update
       sees; ``train=False`` uses the running averages and no dropout. The
       returned ``x`` must keep its shape; gradients do not flow from the
       update back into the attack (it is wrapped in ``stop_gradient``).
    5. Standardise, forward in training mode, loss = mean over the batch of
       ``hooks.loss_fn(logits [B, k], targets [B, k]) -> [B]`` if given, else
       the configured loss ("ce" softmax cross-entropy, "mse" mean over classes
       of (logits - targets)^2); int labels are one-hot encoded first.
    6. Optax update (weight decay coupled, PyTorch-style); batch-norm statistics
       are updated from this forward pass only.

    Hooks run once per step on the whole batch (no Python loop over examples)
    and must be jittable; under ``train_many_seeds`` with vmap they are also
    vmapped over seeds, which plain ``jax.numpy`` code supports. Compose several
    breakers with :func:`compose_hooks`. Test images are never transformed.
    Hooks may change between epochs (``TrainHooks.switch_epoch`` / ``after``):
    each phase of such a schedule gets its own jitted step, compiled when the
    phase begins.

Model options
    ``model_kwargs`` set module attributes: widths/depths (``{"width": 16}``,
    ``{"depth": 28, "widen": 10}`` for WRN-28-10), the computation dtype
    (``{"dtype": jnp.bfloat16}``; parameters, losses and optimizer stay
    float32), or ``{"depth": 0}`` on ``fnn-relu`` for a linear (softmax
    regression) classifier on raw pixels.

Reported curves: ``train_acc_curve`` / ``train_loss_curve`` are running means
over the epoch's training batches (after augmentation and hooks; accuracy
against the targets' argmax), ``test_acc_curve`` is measured after each
evaluated epoch (NaN for epochs skipped by ``eval_every``; the last epoch is
always evaluated). ``peak_epoch`` is 1-based.
"""

from .config import (LOSSES, OPTIMIZERS, SCHEDULES, TrainConfig, TrainHooks, TrainResult, compose_hooks,
                     cross_entropy, mean_squared_error)
from .loop import train_and_evaluate, train_many_seeds
from .step import make_eval_step, make_optimizer, make_train_step

__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "LOSSES", "OPTIMIZERS", "SCHEDULES", "compose_hooks",
           "cross_entropy", "mean_squared_error", "make_optimizer", "make_train_step", "make_eval_step",
           "train_and_evaluate", "train_many_seeds"]
