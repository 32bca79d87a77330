"""Protection methods beside NTGA, in one registry (``python -m ntga.generate --method NAME``).

========  ===================================================================  =========
name      method (paper)                                                        budget
========  ===================================================================  =========
ntga      Neural Tangent Generalization Attacks (Yuan & Wu, ICML 2021)          L-inf/L2
random    uniform noise, sample-wise or class-wise (baseline)                   L-inf
em        error-minimizing noise / Unlearnable Examples (Huang et al., ICLR 21) L-inf
cuda      convolution-based unlearnable data (Sadasivan et al., CVPR 2023)      none
sep       self-ensemble protection (Chen et al., ICLR 2023)                     L-inf
beo       Bayes-error optimisation (Zhang et al., arXiv 2511.08191)             L-inf
lsp       linearly separable patches (Yu et al., KDD 2022)                      L2/L-inf
ops       one-pixel shortcut (Wu et al., ICLR 2023)                             L0
ar        autoregressive noise (Sandoval-Segura et al., NeurIPS 2022)           L2/L-inf
radioactive radioactive data, a mark proving use (Sablayrolles et al., ICML 20) L-inf
========  ===================================================================  =========

Every method, NTGA included, is a :class:`~ntga.methods.base.MethodSpec` whose
``protect`` function the one driver :func:`ntga.run.driver.generate` calls;
block-wise methods (ntga, beo) protect through the shared block runner
(resume, ``--shard``, several devices). Modules are imported on first use so
``--help`` stays fast.
"""

from __future__ import annotations

import importlib

from ntga.methods.base import MethodSpec, Protected, ProtectTask, config_from_options
from ntga.options import lookup

# name -> module defining ``SPECS: dict[str, MethodSpec]``
_MODULES = {
    "ntga": "ntga.methods.ntga",
    "random": "ntga.methods.noise",
    "em": "ntga.methods.em",
    "cuda": "ntga.methods.cuda",
    "sep": "ntga.methods.sep",
    "beo": "ntga.methods.beo",
    "lsp": "ntga.methods.shortcuts",
    "ops": "ntga.methods.shortcuts",
    "ar": "ntga.methods.shortcuts",
    "radioactive": "ntga.methods.radioactive",
}
METHOD_NAMES = tuple(_MODULES)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
      UserInputError: unknown name (the message lists the accepted ones).
    """
    return importlib.import_module(lookup(_MODULES, name, "method")).SPECS[name]


__all__ = ["METHOD_NAMES", "MethodSpec", "Protected", "ProtectTask", "config_from_options", "get_method"]
