"""mimlib: the Mutual Information Machine in small, flat modules.

Where each equation lives:

* :mod:`mimlib.distributions` - Gaussian / Bernoulli conditionals, the N(0, I) anchor
* :mod:`mimlib.objectives`    - ``mim`` (Eq. 7, Algorithm 1), ``amim`` (app. E.2), ``vae`` (Eq. 1)
* :mod:`mimlib.discrete`      - exact information quantities for discrete joints (Eqs. 2-13)
* :mod:`mimlib.nets`          - the networks: ``mlp`` (2-D), ``hvae`` (convHVAE, VampPrior), ``pixelhvae``
* :mod:`mimlib.data`          - the 2-D mixture of section 4
* :mod:`mimlib.images`        - MNIST / Fashion-MNIST on a search path, checksums, binarisation
* :mod:`mimlib.train`         - one fit loop for every objective
* :mod:`mimlib.configs`       - config fields tagged by what they govern; identities derived
* :mod:`mimlib.records`       - run records (config, history, evaluations, figure arrays), no weights
* :mod:`mimlib.precision`     - ``precision="auto"``: bfloat16 only where the hardware is fast at it
* :mod:`mimlib.allocator`     - keep freed memory in the process (glibc), fewer page faults per step
* :mod:`mimlib.metrics`       - KSG mutual information, k-NN accuracy, NLL, reconstruction, active units
* :mod:`mimlib.mixture2d`     - the 2-D study end to end (Figs. 1 and 3)
* :mod:`mimlib.image_study`   - the image study end to end: data, model, train, evaluate (Table 1, Fig. 2)
* :mod:`mimlib.image_config`  - the image run's settings (checked) and identity (run names)
* :mod:`mimlib.image_codes`   - codes and draws of a trained image model (Figs. 2, 4-5)
* :mod:`mimlib.image_tables`  - the image chapters' tables (time per epoch, learning curves)
* :mod:`mimlib.image_cli`     - the command line ``python -m mimlib.image_study``
* :mod:`mimlib.presets`       - smoke / book / paper settings of each chapter
* :mod:`mimlib.published`     - the paper's and the reference code's numbers (``published.csv``)
* :mod:`mimlib.plots`, :mod:`mimlib.book` - figure and chapter helpers
"""

__version__ = "0.1.0"
