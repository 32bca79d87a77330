"""defenses: victim models trained on protected data, and the breakers that undo protection.

Public sub-modules:
    ntga.models    Flax (linen) victims in a registry (MODELS)
    ntga.train     one training/evaluation loop for any victim
    defenses.breakers  registry of defenses (BREAKERS), composable with '+'
    defenses.evaluation  the evaluation library (inputs, runs, results store, report, figures)
    defenses.evaluate  the command line (`python -m defenses.evaluate`)
"""

__version__ = "0.1.0"
