"""Running a generation method: the one driver and the machinery of long runs.

Modules: ``driver`` (:func:`ntga.run.driver.generate`, used by ``python -m
ntga.generate`` for every method), ``blocks`` (the block runner of block-wise
methods), ``spread`` (blocks over devices), ``plan`` (block bounds, ``--shard``),
``workdir`` (``OUT/.work``: fingerprint, block files, method progress files),
``fingerprint`` (what a run's output depends on), ``fraction`` (which rows a
``--fraction`` run protects). Nothing is imported here, so that
:mod:`ntga.methods.base` can use the block runner without an import cycle.
"""
