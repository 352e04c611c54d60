"""A local Sphinx extension of the book: writes each page's <script> tags once.

Sphinx 7.x writes an inline script that an extension adds after the builder started twice
(sphinx-thebe's and sphinx-togglebutton's settings), and the second ``const THEBE_JS_URL``
is a SyntaxError in every page's console. Jupyter Book 1.0.4 pins Sphinx 7, so the book drops
the repeated tags itself, keeping the first of each (same file, same attributes, same body; an inline
script's file is None or "", the same thing).
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (str(getattr(js, "filename", js) or ""),  # inline scripts: None or ""
               tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

