"""ntga: make image datasets unlearnable with Neural Tangent Generalization Attacks.

Public sub-modules:
    ntga.data       dataset specs, loaders, deterministic subsets and splits
    ntga.poisondir  the poison directory format (write / read / verify)
    ntga.pixels     uint8 <-> float, eps-ball projections, rounding within the budget, norms
    ntga.budget     the budget check of released images
    ntga.export     a poison directory as a folder of PNGs
    ntga.kernels    infinite-width NNGP/NTK kernels of the reference surrogates
    ntga.gp         closed-form NTK-GP mean predictions
    ntga.attack     projected gradient ascent against the GP, block-wise
    ntga.generate   the command line (`python -m ntga.generate`)
"""

__version__ = "0.1.0"
