"""Text from a log, a path or a submitted campaign, made inert inside the markdown the harness writes: a viewer
must not render it as HTML, and a table cell must not be split or ended by it."""

from __future__ import annotations


def md_text(text) -> str:
    """Safe in running markdown text: no HTML, no backtick breaks."""
    return str(text).replace("`", "'").replace("<", "&lt;").replace(">", "&gt;")


def md_cell(text) -> str:
    """Safe in a markdown table cell: md_text, with no column bar and on one line."""
    return " ".join(md_text(text).replace("|", "\\|").split())
