"""pytest configuration for the notebooks that `make nbval` checks (book/*.ipynb, _build/smoke/*.ipynb).

The chapters tag checked cells ``NBVAL_CHECK_OUTPUT`` and unchecked ones ``NBVAL_IGNORE_OUTPUT`` in
their cell metadata. nbval reads those upper-case names only as *comments* in a cell's source; as
metadata tags it knows only the lower-case ``nbval-check-output`` / ``nbval-ignore-output``, and it
silently ignored ours, so no committed output was ever compared. This maps the tags the chapters use
onto nbval's markers.
"""

try:
    import nbval.plugin as _nbval
except ImportError:  # nbval not installed: nothing to configure
    _nbval = None

if _nbval is not None:
    for _name, _marker in _nbval.comment_markers.items():
        _nbval.metadata_tags.setdefault(_name, _marker)
