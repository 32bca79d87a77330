"""The library behind `python -m defenses.evaluate`: train victims on clean, poisoned and
broken-poisoned data, and report what each breaker recovers.

Example (the same steps the command line takes)::

    from defenses.breakers import parse_breakers
    from defenses.evaluation import evaluate, load_poisoned, make_conditions, make_victims
    from ntga.train import TrainConfig

    data = load_poisoned("runs/digits-ntga")                       # verified, source data re-checked
    config = TrainConfig(epochs=10, batch_size=64)
    victims = make_victims(["small-cnn"], {}, config)
    conditions = make_conditions(parse_breakers("none,bdr@bits=1"), poisoned=True)
    outcome = evaluate(data, victims, conditions, config=config, seeds=3, base_seed=0, out="runs/eval")
    print(outcome.markdown)

Modules: ``inputs`` (poison directory + source dataset, or a clean split),
``runs`` (conditions, victims, the training loop), ``store`` (results.json,
atomic and resumable), ``report`` (aggregation, Markdown), ``figures``
(bar chart and accuracy curves), ``pipeline`` (``evaluate``).
"""

from .figures import plot_bars, plot_curves, write_figures
from .inputs import EvalData, is_poison_dir, load_clean, load_foreign_poisons, load_poisoned
from .pipeline import Outcome, evaluate
from .report import markdown, markdown_tables, summarize
from .runs import Condition, Victim, check_victim, make_conditions, make_victims, parse_model_opts
from .store import ResultsStore

__all__ = [
    "Condition", "EvalData", "Outcome", "ResultsStore", "Victim", "check_victim", "evaluate", "load_clean",
    "load_poisoned", "load_foreign_poisons", "is_poison_dir", "make_conditions", "make_victims", "markdown",
    "markdown_tables", "parse_model_opts",
    "plot_bars", "plot_curves", "summarize", "write_figures",
]
