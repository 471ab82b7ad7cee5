"""Sphinx configuration: pydata-sphinx-theme, numpydoc and MyST, as NumPy, CuPy and array-api-extra use.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors).
"""

from __future__ import annotations

import gruxp

project = "gruxp"
author = "the gruxp developers"
copyright = "2026, the gruxp developers"  # noqa: A001
release = version = gruxp.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "default-run-loss.png"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
# A class page lists gruxp's methods only: gruxp.torch's modules would otherwise show torch's ~50
# (see _skip_torch_module_members below) and nn.Module.__init__'s boilerplate (_templates/autosummary/class.rst).
templates_path = ["_templates"]
autodoc_typehints = "none"  # the signatures show them; numpydoc's sections explain them
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"gruxp {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False


def _skip_torch_module_members(app, what, name, obj, skip, options):
    """gruxp.torch's modules document gruxp's own methods, not the ~50 nn.Module gives every module."""
    torch = __import__("sys").modules.get("torch")
    if torch is not None and getattr(torch.nn.Module, name, None) is not None and name not in ("forward", "extra_repr"):
        inherited = getattr(torch.nn.Module, name)
        if getattr(obj, "__func__", obj) is getattr(inherited, "__func__", inherited) or name.startswith("_"):
            return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_torch_module_members)
