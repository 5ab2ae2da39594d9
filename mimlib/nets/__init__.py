"""The networks behind the models; each model offers ``encoder``, ``decoder``,
``prior`` and ``anchor`` returning distributions (see :mod:`mimlib.objectives`).

* :mod:`mimlib.nets.mlp`  - the one-hidden-layer Gaussian models of the 2-D experiment
* :mod:`mimlib.nets.hvae` - gated layers, the two-level convolutional HVAE
  (convHVAE, L = 2) with a standard-normal or VampPrior prior on z2

Submodules are imported explicitly (``from mimlib.nets.hvae import ConvHVAE``)
so that importing one model never pays for the others.
"""
