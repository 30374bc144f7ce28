"""Markdown documents that try to slip an image past safe_markdown, and what it makes of them.

Each expected output was checked against micromark with the GFM, math and directive extensions
(the parser inside Streamlit's st.markdown): the input renders an image, the output renders none,
and every code span and block renders the same text (but for one case, marked). Image URLs use
``http://h/``, which the browser test replaces with a listener of its own.
"""

from __future__ import annotations

import random

IMAGE = "http://h/i.png"

# (input, output): every input shows an image (or is a trap around one); no output does.
REWRITTEN = [
    ("![a](http://h/i.png)", "[image: a](http://h/i.png)"),
    ('![a](http://h/i.png "title")', '[image: a](http://h/i.png "title")'),
    ("![](http://h/i.png)", "[image](http://h/i.png)"),
    ("![a](<http://h/i i.png>)", "[image: a](<http://h/i i.png>)"),
    ("![a][r]\n\n[r]: http://h/i.png", "[image: a][r]\n\n[r]: http://h/i.png"),
    ("![a][]\n\n[a]: http://h/i.png", "[image: a][a]\n\n[a]: http://h/i.png"),
    ("![a]\n\n[a]: http://h/i.png", "[image: a][a]\n\n[a]: http://h/i.png"),
    ("[![i](http://h/i.png)](http://h/link)", "[[image: i](http://h/i.png)](http://h/link)"),
    (
        "![a ![b](http://h/b.png)](http://h/i.png)",
        "[image: a [image: b](http://h/b.png)](http://h/i.png)",
    ),
    ("!![a](http://h/i.png)", "\\![image: a](http://h/i.png)"),
    # st.markdown dedents its text: alone, an indented line is no code block.
    ("    ![x](http://h/i.png)", "[image: x](http://h/i.png)"),
    ("\\\\![a](http://h/i.png)", "\\\\[image: a](http://h/i.png)"),
    ("> quote ![a](http://h/i.png)", "> quote [image: a](http://h/i.png)"),
    ("# Title ![a](http://h/i.png)", "# Title [image: a](http://h/i.png)"),
    ("- item\n\n    ![x](http://h/i.png)", "- item\n\n    [image: x](http://h/i.png)"),
    ("<div>\n![x](http://h/i.png)\n</div>", "<div>\n\\![x](http://h/i.png)\n</div>"),
    ("$$\n![x](http://h/i.png)\n$$", "$$\n\\![x](http://h/i.png)\n$$"),
    # What hides a backtick from a code span: a link title, a literal autolink, inline HTML,
    # a directive's attributes (Streamlit writes :material/ as :material_ first).
    ('[a](u "`") ![i](http://h/i.png) `', '[a](u "`") [image: i](http://h/i.png) `'),
    ("http://x`y ![i](http://h/i.png) `z`", "http://x`y [image: i](http://h/i.png) `z`"),
    ('<span title="`">![i](http://h/i.png)`', '<span title="`">[image: i](http://h/i.png)`'),
    (
        ':material/x{a="`"} ![i](http://h/i.png) `',
        ':material/x{a="`"} [image: i](http://h/i.png) `',
    ),
    # Blocks that end a code fence, or hide its opening line, before the image.
    (
        "<div>\n```\n</div>\n\n![x](http://h/i.png)\n```",
        "<div>\n```\n</div>\n\n[image: x](http://h/i.png)\n```",
    ),
    # Math on, "$$" hides the fence; math off, the image is code: an image in one reading is
    # enough to rewrite it (Streamlit loads math only when it sees some).
    ("$$\n```\n$$\n![x](http://h/i.png)\n```", "$$\n```\n$$\n[image: x](http://h/i.png)\n```"),
    (
        ":::note\n```\n:::\n![x](http://h/i.png)\n```",
        ":::note\n```\n:::\n[image: x](http://h/i.png)\n```",
    ),
    # A table row, a heading underline, a definition, a list after code: each ends a span.
    (
        "| `a | ![x](http://h/i.png) | b` |\n|---|---|---|",
        "| `a | \\![x](http://h/i.png) | b` |\n|---|---|---|",
    ),
    ("`a\n===\n![x](http://h/i.png) `", "`a\n===\n[image: x](http://h/i.png) `"),
    ("[r]: `\n![x](http://h/i.png) `", "[r]: `\n\\![x](http://h/i.png) `"),
    (
        "Code:\n\n    code\n2)     ![x](http://h/i.png)",
        "Code:\n\n    code\n2)     [image: x](http://h/i.png)",
    ),
    (
        '- a\n<a href="`">\n\n![x](http://h/i.png)`',
        '- a\n<a href="`">\n\n[image: x](http://h/i.png)`',
    ),
    # Directives: a label's brackets are counted without code, and a leaf directive is a block.
    (":x[`] ![i](http://h/i.png) `", ":x[`] [image: i](http://h/i.png) `"),
    ("a\n::x[`]\n![x](http://h/i.png)`", "a\n::x[`]\n[image: x](http://h/i.png)`"),
    ("\\::x[`] ![i](http://h/i.png) `", "\\::x[`] [image: i](http://h/i.png) `"),
    # micromark takes a tab for part of a directive name: ":::<tab>" opens a container.
    ("para\n:::\t  \n![a](http://h/i.png)`", "para\n:::\t  \n[image: a](http://h/i.png)`"),
    # A heading underline after a definition: the definition may hide a backtick.
    ("[c]: /c{`}\n![x](http://h/i.png)`\n===", "[c]: /c{`}\n\\![x](http://h/i.png)`\n==="),
]

# Code, escapes and non-images: nothing to change.
KEPT = [
    "`![x](http://h/i.png)`",
    "``a ` ![y](http://h/i.png) ``",
    "```md\n![x](http://h/i.png)\n```",
    "~~~~\n```\n![x](http://h/i.png)\n~~~~",
    "```\n![x](http://h/i.png)",  # a fence never closed runs to the end
    "1. step\n   ```\n   ![x](http://h/i.png)\n   ```",
    "> ```\n> ![x](http://h/i.png)\n> ```",
    "Code:\n\n    ![x](http://h/i.png)",
    "\\![a](http://h/i.png)",
    "Plain text, a [link](http://h/page) and <http://h/auto>.",
    "Prices: $5 and $6.",
    "",
]

# A realistic answer: what it should become.
ANSWER = (
    "# Result\n\n"
    "Here is the chart: ![chart](http://h/leak?q=secret)\n\n"
    "To embed an image in Markdown, write:\n\n"
    "```markdown\n![alt text](path/to/image.png)\n```\n\n"
    "or inline: `![alt](img.png)`.\n\n"
    "| column | value |\n|---|---|\n| pic | ![p](http://h/p) |\n\n"
    "1. Step one\n   ```python\n   print('![x](y)')\n   ```\n"
    "2. The area is \\(\\pi r^2\\).\n"
)
SAFE_ANSWER = (
    "# Result\n\n"
    "Here is the chart: [image: chart](http://h/leak?q=secret)\n\n"
    "To embed an image in Markdown, write:\n\n"
    "```markdown\n![alt text](path/to/image.png)\n```\n\n"
    "or inline: `![alt](img.png)`.\n\n"
    "| column | value |\n|---|---|\n| pic | [image: p](http://h/p) |\n\n"
    "1. Step one\n   ```python\n   print('![x](y)')\n   ```\n"
    "2. The area is $\\pi r^2$."
)

# Pieces of Markdown that change how the rest of a document parses, for random documents.
PIECES = (
    *("```", "~~~", "````", "$$", "$", ":::x", ":::", "::::y", "::d[`]", "> ", "- ", "* ", "1. "),
    *("2) ", "10. ", "  ", "    ", "\t", "<div>", "</div>", "<!--", "-->", "<pre>", "</pre>"),
    *('<a href="`">', "<x `>", "<http://h/a`>", "`", "``", "\\`", "\\", "\\\\", "\\!", "!", "!["),
    *("[", "]", "(", ")", "](", "|", "| a |", "|---|", "---", "===", "#", "## ", "text", " "),
    *("![a](http://h/a)", "![b][r]", "[r]: http://h/r", "![c]", "[c]: http://h/c", "[r][]"),
    *("![x](<http://h/y z>)", '![t](http://h/t "ti`tle")', "[![i](http://h/i)](http://h/l)"),
    *("[^1]: ", "[^1]", "http://x`", "www.y.z`", "www.x.com`](", "a@b.c`", ':d{a="`"}'),
    *(
        ":x[`]",
        ":::\t",
        ":material/",
        "{",
        "}",
        "\\(",
        "\\)",
        "\\[",
        "\\]",
        "&#96;",
        "$`$",
        "<script>",
    ),
)


def random_documents(seed: int, count: int) -> list[str]:
    """``count`` documents of 1 to 8 lines, each a few random pieces (the same for a seed)."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        lines = [
            "" if rng.random() < 0.15 else "".join(rng.choices(PIECES, k=rng.randint(1, 6)))
            for _ in range(rng.randint(1, 8))
        ]
        documents.append("\n".join(lines))
    return documents
