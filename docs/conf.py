"""Sphinx configuration of volara's documentation.

    pip install -e ".[docs]"
    sphinx-build -W -b html docs docs/_build/html

The reference is generated from the models themselves (autodoc_pydantic: the
docstring under each field is its documentation) and from the click
commands (sphinx-click). The tutorials are scripts in ``docs/tutorials/``
that `tutorials` (``docs/_ext/tutorials.py``) runs at the start of every
build; their pages show the scripts and what they printed and drew.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "volara"
author = "volara 2 developers"
copyright = "volara 2 developers"
release = "2.0.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib.autodoc_pydantic",
    "sphinx_click",
    "tutorials",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "blockwise processing of large 3D microscopy volumes",
    "fixed_sidebar": True,
}

# markdown: ```{directive} fences, $ math off, anchors for the ## headings
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# the field docstrings are the documentation; the JSON schema and the
# validator lists repeat what the fields already say
autodoc_member_order = "bysource"
autodoc_pydantic_model_show_json = False
autodoc_pydantic_model_show_config_summary = False
autodoc_pydantic_model_show_validator_summary = False
autodoc_pydantic_model_show_validator_members = False
autodoc_pydantic_model_show_field_summary = False
autodoc_pydantic_model_member_order = "bysource"
autodoc_pydantic_model_undoc_members = True
autodoc_pydantic_model_members = True
autodoc_pydantic_model_hide_paramlist = True
autodoc_pydantic_field_list_validators = False
autodoc_pydantic_field_show_default = True
autodoc_pydantic_field_show_required = True
autodoc_pydantic_field_show_constraints = False
autodoc_pydantic_field_doc_policy = "docstring"
