"""Small helpers for the chapters: show the library's code beside the equation it implements."""

from __future__ import annotations

import inspect
import re
import textwrap

__all__ = ["show_source"]


def show_source(obj, lines: tuple[int, int] | None = None, strip_docstring: bool = False):
    """The source of a mimlib function or class, highlighted (an IPython ``Code`` object).

    ``lines=(a, b)`` keeps lines a..b (1-based, inclusive) of the object's source;
    ``strip_docstring`` drops the docstring so only the code shows.
    """
    from IPython.display import Code

    src = textwrap.dedent(inspect.getsource(obj))
    if strip_docstring and obj.__doc__:
        src = re.sub(r'\n[ \t]*[rRuU]?"""(.|\n)*?"""[ \t]*\n', "\n", src, count=1)
    if lines is not None:
        a, b = lines
        src = "\n".join(src.splitlines()[a - 1:b])
    return Code(src, language="python")
