"""Small fixes to the HTML that Jupyter Book 1.x produces, so the book runs without console errors.

- sphinx-thebe and sphinx-togglebutton are registered twice (once by Jupyter Book, once by the
  theme), so their inline scripts declare the same ``const`` twice: keep each script once.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # The two registrations differ only in an empty filename: None versus "".
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # In place: the list is the builder's, and later handlers (MathJax's) append to it.
    scripts[:] = unique


def setup(app):
    # Early: html-page-context stops at the first handler that returns a template name.
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
