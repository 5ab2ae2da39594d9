"""mimlib: the Mutual Information Machine in small, flat modules.

Where each equation lives:

* :mod:`mimlib.distributions` - Gaussian / Bernoulli conditionals, the N(0, I) anchor
* :mod:`mimlib.objectives`    - ``mim`` (Eq. 7, Algorithm 1), ``amim`` (app. E.2), ``vae`` (Eq. 1)
* :mod:`mimlib.discrete`      - exact information quantities for discrete joints (Eqs. 3-13)
* :mod:`mimlib.nets`          - the networks (2-D MLPs; image models)
* :mod:`mimlib.data`          - the 2-D mixture, image files on a search path
* :mod:`mimlib.train`         - one fit loop for every objective
* :mod:`mimlib.metrics`       - KSG mutual information, k-NN accuracy, NLL, reconstruction
* :mod:`mimlib.presets`       - smoke / book / paper settings of each chapter
* :mod:`mimlib.plots`         - figure helpers shared by the chapters
"""

__version__ = "0.1.0"
