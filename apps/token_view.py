"""The token-probability view of an answer: each token shaded by how sure the model was, and its
alternatives in a tooltip that opens on hover, or on a click (the token takes the focus).

The strip is HTML for ``st.html``: every piece of text in it (tokens, alternatives) is escaped,
and the styles hold only numbers computed here, so an answer cannot add markup or load anything.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from tschat.chat.logprobs import TokenView

NEWLINE_MARK = "↵"  # a newline token would otherwise have nothing to shade
TOKEN_CLASS = "tschat-token"
STYLE = f"""<style>
.{TOKEN_CLASS} {{ position: relative; border-radius: 3px; cursor: help; }}
.{TOKEN_CLASS}:hover::after, .{TOKEN_CLASS}:focus::after {{
  content: attr(data-alternatives); position: absolute; left: 0; top: 1.7em; z-index: 20;
  white-space: pre; background: #262730; color: #fff; padding: 4px 8px; border-radius: 4px;
  font-size: 0.8rem; line-height: 1.5; pointer-events: none;
}}
.{TOKEN_CLASS}:focus {{ outline: 1px solid #262730; }}
</style>"""


def token_strip_html(views: Sequence[TokenView]) -> str:
    """The tokens as HTML: one shaded span per token, its alternatives in ``data-alternatives``.

    >>> from tschat.chat.logprobs import Alternative
    >>> strip = token_strip_html([TokenView("<b>", 0.5, (Alternative('"', 0.1),))])
    >>> "&lt;b&gt;</span>" in strip, "<b>" in strip
    (True, False)
    >>> 'data-alternatives="“&lt;b&gt;” 50.0%' in strip
    True
    """
    spans = []
    for view in views:
        shown = view.text.replace("\n", f"{NEWLINE_MARK}\n")
        spans.append(
            f'<span class="{TOKEN_CLASS}" tabindex="0" style="background-color: {view.colour};" '
            f'data-alternatives="{html.escape(view.hover(), quote=True)}">'
            f"{html.escape(shown)}</span>"
        )
    return (
        STYLE
        + '<div class="tschat-tokens" style="white-space: pre-wrap; line-height: 1.9;">'
        + "".join(spans)
        + "</div>"
    )
