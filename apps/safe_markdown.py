r"""Make a model's answer safe to show with ``st.markdown``: nothing in it loads by itself.

``st.markdown`` runs with HTML off, but Markdown images still make the browser fetch their URL
as soon as the answer is drawn, so a reply (or a prompt injected into one) could leak the
conversation to a server it names. :func:`safe_markdown` turns every image into a link the user
can click (``![a](u)`` -> ``[image: a](u)``), and escapes every other ``![`` so that no image can
form; text inside code spans and code blocks is left exactly as it was. It also rewrites the
LaTeX delimiters ``\( \)`` and ``\[ \]`` to the ``$ $`` and ``$$ $$`` that Streamlit renders.

Where the text is code is decided the way Streamlit's Markdown parser (micromark with GFM,
math and directives) decides it: a CommonMark block parser (containers, fences, HTML blocks,
math blocks, footnote definitions, directive containers) and the inline rules for code spans
and what takes precedence over them. Where two readings are possible (math on or off, a table
row or a paragraph, and so on) text is left alone only if it is code in every reading, and the
result is checked again, so a doubt costs at most a visible backslash, never a fetch.

>>> print(safe_markdown("See ![the chart](https://example.com/c.png) and `![x](y)`."))
See [image: the chart](https://example.com/c.png) and `![x](y)`.
>>> print(safe_markdown("Area: \\(\\pi r^2\\)"))
Area: $\pi r^2$
"""

from __future__ import annotations

import bisect
import re
import textwrap
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

# ---------------------------------------------------------------------------- public

MAX_PARSED_CHARS = 100_000  # longer texts (an imported one, say) get every "![" escaped


def safe_markdown(text: str) -> str:
    r"""``text`` with images made into links and LaTeX delimiters made Streamlit's.

    The result is dedented and stripped, as st.markdown does with any text it is given. A
    text longer than MAX_PARSED_CHARS is not parsed: every ``![`` in it is escaped, code too.

    >>> print(safe_markdown("![logo][l]\n\n[l]: https://example.com/logo.png"))
    [image: logo][l]
    <BLANKLINE>
    [l]: https://example.com/logo.png
    >>> print(safe_markdown("```md\n![kept](as-is.png)\n```"))
    ```md
    ![kept](as-is.png)
    ```
    >>> safe_markdown("Wow![1] no image here")
    'Wow\\![1] no image here'
    >>> print(safe_markdown("\\[\nE = mc^2\n\\]"))
    $$
    E = mc^2
    $$
    """
    # st.markdown dedents and strips what it is given; doing it here first means that what is
    # checked below is exactly what Streamlit parses (and doing it again changes nothing).
    text = textwrap.dedent(text).strip()
    if "![" not in text and "\\(" not in text and "\\[" not in text:
        return text  # nothing to rewrite (most answers): no need to parse
    if len(text) > MAX_PARSED_CHARS:
        # Far longer than any answer: bound the time, at the price of a backslash in code.
        return re.sub(r"(?<!\\)((?:\\\\)*)!\[", r"\1\\![", text)
    result = text
    for _ in range(4):
        rewritten = _rewrite(result)
        if rewritten == result:
            return result
        result = rewritten
    # The rewrites did not settle (never seen): escape every image opener that is not code.
    seen = _as_parsed(result)
    exempt = _exempt_mask(seen, _definitions(seen))
    return "".join(
        "\\!" if char == "!" and _opens_image(result, i) and not exempt[i] else char
        for i, char in enumerate(result)
    )


# ---------------------------------------------------------------------------- the rewrite

_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


class _Edit(NamedTuple):
    start: int
    end: int
    text: str


def _rewrite(text: str) -> str:
    """One pass: rewrite images and LaTeX delimiters outside code."""
    seen = _as_parsed(text)
    definitions = _definitions(seen)
    primary = _Analysis(seen, _PRIMARY, definitions)
    exempt = _exempt_mask(seen, definitions, primary)
    edits: list[_Edit] = []
    handled: set[int] = set()
    for unit, scan in primary.units:
        edits += _latex_edits(unit, scan)
        for position in range(len(unit.text) - 1):
            where = unit.origins[position]
            if not _opens_image(unit.text, position) or exempt[where]:
                continue
            handled.add(where)
            edits += _image_edits(unit, scan, position)
    # Outside paragraphs and headings (an HTML or math block, say) an escape is enough.
    for match in re.finditer(r"!\[", text):
        where = match.start()
        if where not in handled and _opens_image(text, where) and not exempt[where]:
            edits.append(_Edit(where, where, "\\"))
    return _apply(text, edits)


def _as_parsed(text: str) -> str:
    """The text as st.markdown hands it to the parser (same length, so positions match).

    Streamlit writes ``:material/`` as ``:material_`` first, which can make a directive.
    """
    return text.replace(":material/", ":material_")


def _opens_image(text: str, where: int) -> bool:
    """Whether ``!`` at ``where`` is followed by ``[`` and not escaped by a backslash."""
    return text.startswith("![", where) and _opens(text, where)


def _opens(text: str, where: int) -> bool:
    """Whether the character at ``where`` is not escaped (an even number of backslashes before)."""
    backslashes = 0
    while where - backslashes - 1 >= 0 and text[where - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 0


def _apply(text: str, edits: Iterable[_Edit]) -> str:
    out = []
    at = 0
    for edit in sorted(set(edits)):
        out.append(text[at : edit.start])
        out.append(edit.text)
        at = edit.end
    out.append(text[at:])
    return "".join(out)


def _image_edits(unit: _Unit, scan: _Scan, position: int) -> list[_Edit]:
    """Turn the image at ``position`` into a link to its URL; escape any other ``![``."""
    where = unit.origins[position]
    image = None if scan.code[position] else scan.images.get(position)
    if image is None:
        return [_Edit(where, where, "\\")]
    close, kind = image
    s = unit.text
    alt = s[position + 2 : close]
    edits = [_Edit(where, where + 2, "[image: " if alt.strip() else "[image")]
    if position > 0 and s[position - 1] == "!" and _opens(s, position - 1):
        # "!![a](u)": the first "!" would open an image in front of the new "[".
        edits.append(_Edit(unit.origins[position - 1], unit.origins[position - 1], "\\"))
    if kind == "collapsed":  # ![alt][] -> [image: alt][alt]
        at = unit.origins[close + 2]
        edits.append(_Edit(at, at, alt))
    elif kind == "shortcut":  # ![alt] -> [image: alt][alt]
        at = unit.origins[close] + 1
        edits.append(_Edit(at, at, f"[{alt}]"))
    return edits


def _latex_edits(unit: _Unit, scan: _Scan) -> list[_Edit]:
    r"""``\( \)`` -> ``$ $`` and ``\[ \]`` -> ``$$ $$``, for pairs outside code and math."""
    edits: list[_Edit] = []
    opener: tuple[str, int] | None = None
    for kind, position in scan.latex:
        if opener is not None and kind == {"(": ")", "[": "]"}[opener[0]]:
            start = opener[1]
            content = unit.text[start + 2 : position]
            if content.strip():
                longest = max((len(run) for run in re.findall(r"\$+", content)), default=0)
                fence = "$" * max(1 if opener[0] == "(" else 2, longest + 1)
                for at in (start, position):
                    edits.append(_Edit(unit.origins[at], unit.origins[at + 1] + 1, fence))
            opener = None
        elif kind in "([":
            opener = (kind, position)
    return edits


# ---------------------------------------------------------------------------- what is code


@dataclass(frozen=True)
class _Options:
    """A reading of the text: which constructs the parser knows besides CommonMark's core."""

    math: bool = True  # $...$ and $$ blocks (Streamlit loads remark-math when it sees math)
    directives: bool = True  # :name[...]{...} and ::: containers
    footnotes: bool = True  # [^label]: definitions
    references: bool = True  # [text][label] links to the definitions found
    hiders: bool = True  # links, autolinks and inline HTML, which hide backticks from code spans


_PRIMARY = _Options()
_BARE = _Options(math=False, directives=False, references=False, hiders=False)


def _readings(text: str, definitions: set[str]) -> Iterator[_Options]:
    """The readings to consider; a construct is varied only when the text could use it."""
    choices = (True, False)
    for math in choices if "$" in text else (True,):
        for directives in choices if ":" in text else (True,):
            for footnotes in choices if "[^" in text else (True,):
                for references in choices if definitions else (True,):
                    yield _Options(math, directives, footnotes, references)


def _exempt_mask(text: str, definitions: set[str], primary: _Analysis | None = None) -> bytearray:
    """1 for each character that is code in every reading, else 0.

    Only an image opener that is code in the main reading can be exempt, so the other
    readings are parsed only when there is one.
    """
    if primary is None:
        primary = _Analysis(text, _PRIMARY, definitions)
    mask = bytearray(primary.code)
    openers = (match.start() for match in re.finditer(r"!\[", text))
    if any(mask[where] and _opens_image(text, where) for where in openers):
        for options in _readings(text, definitions):
            if options != _PRIMARY:
                _and(mask, _Analysis(text, options, definitions).code)
    return mask


def _and(target: bytearray, other: bytearray) -> None:
    for i, flag in enumerate(other):
        if not flag:
            target[i] = 0


@dataclass
class _Unit:
    """The inline content of a paragraph or heading: its text and where each character is from."""

    text: str
    origins: list[int]


@dataclass
class _Scan:
    """What an inline scan found in a unit (positions are the unit's)."""

    code: bytearray  # 1 inside code spans
    images: dict[int, tuple[int, str]] = field(default_factory=dict)  # "!" -> ("]", kind)
    latex: list[tuple[str, int]] = field(default_factory=list)  # \( \) \[ \] outside code


class _Analysis:
    """The code characters of ``text`` in one reading, and its inline units."""

    def __init__(self, text: str, options: _Options, definitions: set[str]) -> None:
        self.code = bytearray(len(text))
        self.units: list[tuple[_Unit, _Scan]] = []
        defined = definitions if options.references else set()
        parser = _BlockParser(text, options)
        parser.parse()
        for start, end in parser.code_ranges:
            self.code[start:end] = b"\x01" * (end - start)
        for lines, is_paragraph in parser.inline_blocks:
            unit = _join(text, lines)
            main = _scan(unit.text, options, defined)
            self.units.append((unit, main))
            if is_paragraph and _DEFINITION_START.match(unit.text):
                continue  # definitions may hide anything: nothing here counts as code
            # Code only if it is code without the constructs that hide backticks too, and, in
            # what may be a table, code in each row and cell as well.
            code = bytearray(main.code)
            _and(code, _scan(unit.text, _BARE, set()).code)
            if _may_be_table(unit.text):
                self._and_rows(unit, code, options, defined)
            for position, flag in enumerate(code):
                if flag:
                    self.code[unit.origins[position]] = 1

    @staticmethod
    def _and_rows(unit: _Unit, code: bytearray, options: _Options, defined: set[str]) -> None:
        """Keep as code only what is code within its own line and its own cell."""
        for line_start, line_end in _line_ranges(unit.text):
            line = unit.text[line_start:line_end]
            row = _scan(line, options, defined).code
            for cell_start, cell_end in _cells(line):
                cell = _scan(line[cell_start:cell_end], options, defined).code
                for i, flag in enumerate(cell, start=cell_start):
                    if not (flag and row[i]):
                        code[line_start + i] = 0


def _join(text: str, lines: list[tuple[int, int]]) -> _Unit:
    """The unit made of the given (start, end) slices of ``text``, joined by newlines."""
    parts: list[str] = []
    origins: list[int] = []
    for index, (start, end) in enumerate(lines):
        if index:
            parts.append("\n")
            origins.append(lines[index - 1][1])  # the line ending it stands for
        parts.append(text[start:end])
        origins.extend(range(start, end))
    return _Unit("".join(parts), origins)


def _line_ranges(s: str) -> Iterator[tuple[int, int]]:
    start = 0
    for match in re.finditer("\n", s):
        yield start, match.start()
        start = match.end()
    yield start, len(s)


def _may_be_table(text: str) -> bool:
    """Whether a line could be a GFM table's delimiter row (``| --- | :-: |``, ``--|--``)."""
    return any(
        set(line) <= set(" \t|:-") and "-" in line and ("|" in line or ":" in line)
        for line in text.split("\n")
    )


def _cells(line: str) -> Iterator[tuple[int, int]]:
    """Table cells: the line cut at each ``|`` that no backslash escapes."""
    start = 0
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == "|":
            yield start, i
            start = i + 1
        i += 1
    yield start, len(line)


_DEFINITION = re.compile(
    r"^(?:[ \t>]|[-+*][ \t]|\d{1,9}[.)][ \t])*\[((?:[^\[\]\\]|\\.){1,999})\]:", re.MULTILINE
)
_DEFINITION_START = re.compile(r"[ \t]*\[(?:[^\[\]\\]|\\.)*\]:", re.DOTALL)


def _definitions(text: str) -> set[str]:
    """The labels that link reference definitions seem to define (a few too many at worst)."""
    return {_normalize_label(match.group(1)) for match in _DEFINITION.finditer(text)}


def _normalize_label(label: str) -> str:
    return " ".join(label.split()).casefold()


# ---------------------------------------------------------------------------- inline scan

_TAG = r"[A-Za-z][A-Za-z0-9-]*"
_ATTRIBUTE = (
    r"(?:\s+[a-zA-Z_:][a-zA-Z0-9:._-]*"
    r"(?:\s*=\s*(?:[^\"'=<>`\x00-\x20]+|'[^']*'|\"[^\"]*\"))?)"
)
_OPEN_TAG = rf"<{_TAG}{_ATTRIBUTE}*\s*/?>"
_CLOSE_TAG = rf"</{_TAG}\s*>"
_HTML_TAG = re.compile(rf"{_OPEN_TAG}|{_CLOSE_TAG}")
# Inline HTML that runs to a closing string: (opening, where to look for the closing, closing).
_HTML_RUNS: tuple[tuple[str, int, str], ...] = (
    ("<!-->", 0, ""),
    ("<!--->", 0, ""),
    ("<!--", 4, "-->"),
    ("<?", 2, "?>"),
    ("<![CDATA[", 9, "]]>"),
)
_AUTOLINK = re.compile(
    r"<[A-Za-z][A-Za-z0-9.+-]{1,31}:[^<>\x00-\x20]*>"
    r"|<[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*>"
)
_LITERAL_START = re.compile(r"(?:https?://|www\.)", re.IGNORECASE)
_LINK_TITLE = re.compile(
    r"""[ \t\n]*(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\((?:[^()\\]|\\.)*\))"""
)


class _HtmlFinder:
    """Autolinks and inline HTML in one text, found without scanning it again and again."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.missing: dict[str, int] = {}  # closing string -> first position with none after

    def end(self, i: int) -> int | None:
        """The end of an autolink or of inline HTML starting at ``i`` (a ``<``), or None."""
        s = self.s
        for opening, skip, closing in _HTML_RUNS:
            if s.startswith(opening, i):
                return i + len(opening) if not closing else self._find(closing, i + skip)
        if s.startswith("<!", i) and s[i + 2 : i + 3].isascii() and s[i + 2 : i + 3].isalpha():
            return self._find(">", i + 2)  # a declaration
        match = _AUTOLINK.match(s, i) or _HTML_TAG.match(s, i)
        return None if match is None else match.end()

    def _find(self, closing: str, start: int) -> int | None:
        if start >= self.missing.get(closing, len(self.s) + 1):
            return None
        found = self.s.find(closing, start)
        if found == -1:
            self.missing[closing] = start
            return None
        return found + len(closing)


class _LabelStart(NamedTuple):
    position: int
    image: bool


def _scan(s: str, options: _Options, defined: set[str]) -> _Scan:
    """Find the code spans (and images, and LaTeX delimiters) of one unit, left to right.

    Like micromark: an escaped character opens nothing; a code span runs to the next run of
    as many backticks; a math span, an autolink, inline HTML, a literal autolink, a directive's
    attributes and a link's destination or reference, each starting first, hide the backticks
    they hold.
    """
    scan = _Scan(bytearray(len(s)))
    labels: list[_LabelStart] = []  # "[" and "![" not yet closed
    inactive_below = 0  # link starts below this place in ``labels`` can no longer make a link
    runs = {char: _Runs(s, char) for char in "`$"}
    html = _HtmlFinder(s)
    i = 0
    n = len(s)
    while i < n:
        char = s[i]
        end: int | None = None
        if char == "\\":
            if i + 1 < n and s[i + 1] in _ASCII_PUNCTUATION:
                if s[i + 1] in "()[]":
                    scan.latex.append((s[i + 1], i))
                i += 2
            else:
                i += 1
            continue
        if char == "`" or (char == "$" and options.math):
            run = _run_end(s, i, char)
            end = runs[char].closing(run, run - i)
            if end is None:
                i = run
                continue
            if char == "`":
                scan.code[i:end] = b"\x01" * (end - i)
        elif options.hiders and char == "<":
            end = html.end(i)
        elif options.hiders and not labels and char in "hHwW":
            end = _literal_autolink_end(s, i)
        elif (
            options.directives and char == ":" and not (i and s[i - 1] == ":" and _opens(s, i - 1))
        ):
            end = _text_directive_end(s, i)
        elif char == "!" and i + 1 < n and s[i + 1] == "[":
            labels.append(_LabelStart(i, image=True))
            end = i + 2
        elif char == "[":
            labels.append(_LabelStart(i, image=False))
        elif char == "]" and labels:
            start = labels.pop()
            active = start.image or len(labels) >= inactive_below
            inactive_below = min(inactive_below, len(labels))  # what is pushed next is new
            if active:
                label_start = start.position + (2 if start.image else 1)
                formed = _label_end(s, label_start, i, defined, options.hiders)
                if formed is not None:
                    end, kind = formed
                    if start.image:
                        scan.images[start.position] = (i, kind)
                    else:  # no links inside links: the link starts still open are spent
                        inactive_below = len(labels)
        if end is not None:
            i = end
        else:
            i += 1
    return scan


def _label_end(
    s: str, label_start: int, close: int, defined: set[str], resources: bool
) -> tuple[int, str] | None:
    """What follows a ``]`` that closes a label: (end, kind) of the link or image, or None."""
    after = close + 1
    is_defined = bool(defined) and _normalize_label(s[label_start:close]) in defined
    if s.startswith("(", after):
        end = _resource_end(s, after) if resources else None
        if end is not None:
            return end, "inline"
        return (after, "shortcut") if is_defined else None
    if s.startswith("[", after):
        label_end = _reference_label_end(s, after)
        if label_end is not None and _normalize_label(s[after + 1 : label_end]) in defined:
            return label_end + 1, "full"
        if not is_defined:
            return None
        if s.startswith("[]", after):
            return after + 2, "collapsed"
        return after, "shortcut"
    return (after, "shortcut") if is_defined else None


def _reference_label_end(s: str, open_bracket: int) -> int | None:
    """The ``]`` of a link label ``[...]`` (no brackets inside, at most 999 characters)."""
    i = open_bracket + 1
    while i < len(s) and i - open_bracket <= 1000:
        if s[i] == "\\" and i + 1 < len(s):
            i += 2
            continue
        if s[i] == "[":
            return None
        if s[i] == "]":
            return i if s[open_bracket + 1 : i].strip() else None
        i += 1
    return None


def _resource_end(s: str, open_paren: int) -> int | None:
    """The index after the ``)`` of an inline destination and title, or None."""
    i = _skip_space(s, open_paren + 1)
    destination_start = i
    if i < len(s) and s[i] == "<":
        i += 1
        while i < len(s) and s[i] not in "<>\n":
            i += 2 if s[i] == "\\" else 1
        if i >= len(s) or s[i] != ">":
            return None
        i += 1
    else:
        depth = 0
        while i < len(s):
            char = s[i]
            if char == "\\" and i + 1 < len(s) and s[i + 1] in _ASCII_PUNCTUATION:
                i += 2
                continue
            if char == "(":
                depth += 1
                if depth > 32:
                    return None
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif char in " \t\n" or ord(char) < 0x20 or ord(char) == 0x7F:
                break
            i += 1
        if depth:
            return None
    title = _LINK_TITLE.match(s, i)
    if title is not None and (i == destination_start or s[i] in " \t\n"):
        i = title.end()
    i = _skip_space(s, i)
    return i + 1 if i < len(s) and s[i] == ")" else None


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\n":
        i += 1
    return i


def _run_end(s: str, i: int, char: str) -> int:
    while i < len(s) and s[i] == char:
        i += 1
    return i


class _Runs:
    """The runs of one character in a text, by length, to find a closing run quickly."""

    def __init__(self, s: str, char: str) -> None:
        self.starts: dict[int, list[int]] = {}
        for match in re.finditer(re.escape(char) + "+", s):
            self.starts.setdefault(match.end() - match.start(), []).append(match.start())

    def closing(self, start: int, size: int) -> int | None:
        """The end of the first run of exactly ``size`` characters that begins at ``start`` or
        later (a code span's closing backticks), or None."""
        starts = self.starts.get(size, [])
        index = bisect.bisect_left(starts, start)
        return starts[index] + size if index < len(starts) else None


def _literal_autolink_end(s: str, i: int) -> int | None:
    """The end of a GFM literal autolink (``www.``, ``http://``) starting at ``i``, if any.

    Only its extent matters here (the backticks and dollars it holds open nothing); it follows
    micromark-extension-gfm-autolink-literal: a domain, then a path up to whitespace, less the
    punctuation that trails it.
    """
    match = _LITERAL_START.match(s, i)
    if match is None:
        return None
    previous = s[i - 1] if i else " "
    www = match.group().lower() == "www."
    if www and not (previous.isspace() or previous in "(*_[]~"):
        return None
    if not www and previous.isascii() and previous.isalpha():
        return None
    domain_start = match.end()
    j = domain_start
    while j < len(s) and not s[j].isspace() and (s[j] in "-._" or not _is_punctuation(s[j])):
        j += 1
    segments = s[domain_start:j].split(".")
    if j == domain_start or "_" in "".join(segments[-2:]):
        return None
    if not www and _is_punctuation(s[domain_start]):
        return None
    opened = closed = 0
    while j < len(s) and not s[j].isspace():
        char = s[j]
        if char == "(":
            opened += 1
        elif char == ")" and closed < opened:
            closed += 1
        elif char in _PATH_PUNCTUATION and _trails(s, j):
            return j
        elif char == ")":
            closed += 1
        j += 1
    return j


_PATH_PUNCTUATION = frozenset("!\"&')*,.:;<?]_~")
_TRAIL = frozenset("!\"')*,.:;?_~")


def _trails(s: str, j: int) -> bool:
    """Whether the punctuation from ``j`` on ends a literal autolink instead of belonging to it."""
    while j < len(s):
        char = s[j]
        if char in _TRAIL:
            j += 1
        elif char == "&":
            reference = re.match(r"&[A-Za-z]+;", s[j:])
            if reference is None:
                return False
            j += reference.end()
        elif char == "]":
            j += 1
            if j >= len(s) or s[j] in "([" or s[j].isspace():
                return True
        else:
            return char == "<" or char.isspace()
    return True


def _is_punctuation(char: str) -> bool:
    """micromark's unicodePunctuation: Unicode punctuation and symbols."""
    return char in _ASCII_PUNCTUATION or unicodedata.category(char)[0] in "PS"


def _text_directive_end(s: str, i: int) -> int | None:
    """The end of a text directive ``:name[label]{attributes}`` at ``i`` that has a label or
    attributes (they hide what they hold), or None."""
    name_end = _directive_name_end(s, i + 1)
    if name_end is None or s.startswith(":", name_end):
        return None
    end = _directive_tail_end(s, name_end, allow_eol=True)
    return end if end > name_end else None


def _directive_tail_end(s: str, j: int, *, allow_eol: bool) -> int:
    """After a directive's name: the end of its label and attributes (``j`` if none)."""
    if s.startswith("[", j):
        j = _directive_label_end(s, j, allow_eol) or j
    if s.startswith("{", j):
        j = _directive_attributes_end(s, j, allow_eol) or j
    return j


def _directive_name_end(s: str, j: int) -> int | None:
    """The end of a directive name at ``j`` (micromark's factoryName), or None.

    micromark reads a tab as a code its whitespace check does not see, so a tab counts as part
    of a name (``:::<tab>`` opens a container).
    """

    def allowed(char: str, first: bool) -> bool:
        if char == "\t":
            return True
        return not char.isspace() and ((char in "-_" and not first) or not _is_punctuation(char))

    if j >= len(s) or not allowed(s[j], first=True):
        return None
    k = j + 1
    while k < len(s) and allowed(s[k], first=False):
        k += 1
    return None if s[k - 1] in "-_" else k


def _directive_label_end(s: str, j: int, allow_eol: bool) -> int | None:
    """The end of a directive label ``[...]`` at ``j``: brackets balanced, code not counted."""
    k = j + 1
    balance = 0
    while k < len(s):
        char = s[k]
        if char == "[":
            balance += 1
            if balance > 32:
                return None
        elif char == "]":
            if balance == 0:
                return k + 1
            balance -= 1
        elif char in "\r\n" and not allow_eol:
            return None
        elif char == "\\" and s[k + 1 : k + 2] in ("[", "\\", "]"):
            k += 1
        k += 1
    return None


def _directive_attributes_end(s: str, j: int, allow_eol: bool) -> int | None:
    """The end of directive attributes ``{...}`` at ``j`` (micromark's factoryAttributes)."""
    n = len(s)

    def at(k: int) -> str:
        return s[k] if k < n else ""

    def space(char: str) -> bool:
        return char in (" ", "\t") or (allow_eol and char in ("\r", "\n"))

    k = j + 1
    while True:
        char = at(k)
        if char in ("#", "."):  # #id or .class
            k += 1
            if at(k) == "" or at(k) in "\"#'.<=>`}" or at(k).isspace():
                return None
            while at(k) not in ("#", ".", "}") and not at(k).isspace():
                if at(k) == "" or at(k) in "\"'<=>`":
                    return None
                k += 1
            continue
        if char and space(char):
            k += 1
            continue
        if not char or char.isspace() or (_is_punctuation(char) and char not in "-_"):
            return k + 1 if char == "}" else None
        while at(k) and not at(k).isspace() and (at(k) in "-.:_" or not _is_punctuation(at(k))):
            k += 1
        while at(k) and space(at(k)):
            k += 1
        if at(k) != "=":
            continue
        k += 1
        while at(k) and space(at(k)):
            k += 1
        char = at(k)
        if not char or char in "<=>`}" or char in "\r\n":
            return None
        if char in "\"'":
            close = s.find(char, k + 1)
            if close == -1 or (not allow_eol and "\n" in s[k:close]):
                return None
            k = close + 1
            if not (at(k) == "}" or (at(k) and at(k) in " \t\r\n")):
                return None
            continue
        while at(k) != "}" and not (at(k) and at(k) in " \t\r\n"):
            if not at(k) or at(k) in "\"'<=>`":
                return None
            k += 1


# ---------------------------------------------------------------------------- block structure

_CODE_INDENT = 4
_MAYBE_SPECIAL = re.compile(r"[#`~*+_=<>0-9\-$:\[|]")
_ATX = re.compile(r"#{1,6}(?:[ \t]+|$)")
_FENCE = re.compile(r"`{3,}(?!.*`)|~{3,}")
_MATH_FENCE = re.compile(r"\${2,}(?![^\n]*\$)")
_CLOSING_FENCE = re.compile(r"(?:`{3,}|~{3,}|\${2,})(?=[ \t]*$)")
_SETEXT = re.compile(r"(?:=+|-+)[ \t]*$")
_THEMATIC = re.compile(r"(?:(?:\*[ \t]*){3,}|(?:_[ \t]*){3,}|(?:-[ \t]*){3,})$")
_BULLET = re.compile(r"[*+-]")
_ORDERED = re.compile(r"(\d{1,9})([.)])")
_FOOTNOTE = re.compile(r"\[\^(?:[^\]\[\\\s]|\\.)+\]:")
_DIRECTIVE_CLOSE = re.compile(r"(:{3,})[ \t]*$")
_BLOCK_TAGS = (
    "address|article|aside|base|basefont|blockquote|body|caption|center|col|colgroup|dd|"
    "details|dialog|dir|div|dl|dt|fieldset|figcaption|figure|footer|form|frame|frameset|"
    "h[1-6]|head|header|hr|html|iframe|legend|li|link|main|menu|menuitem|nav|noframes|ol|"
    "optgroup|option|p|param|search|section|summary|table|tbody|td|tfoot|th|thead|title|tr|"
    "track|ul"
)
_HTML_OPEN = [
    re.compile(r"<(?:script|pre|textarea|style)(?:\s|>|$)", re.IGNORECASE),
    re.compile(r"<!--"),
    re.compile(r"<\?"),
    re.compile(r"<![A-Za-z]"),
    re.compile(r"<!\[CDATA\["),
    re.compile(rf"</?(?:{_BLOCK_TAGS})(?:\s|/?>|$)", re.IGNORECASE),
    re.compile(rf"(?:{_OPEN_TAG}|{_CLOSE_TAG})\s*$"),
]
_HTML_CLOSE = [
    re.compile(r"</(?:script|pre|textarea|style)>", re.IGNORECASE),
    re.compile(r"-->"),
    re.compile(r"\?>"),
    re.compile(r">"),
    re.compile(r"\]\]>"),
]
_LEAVES = ("paragraph", "fence", "indented", "html")


class _Block:
    """A node of the block tree (only what deciding about code needs)."""

    def __init__(self, kind: str, parent: _Block | None) -> None:
        self.kind = kind
        self.parent = parent
        self.children: list[_Block] = []
        self.open = True
        self.lines: list[tuple[int, int]] = []  # (start, end) of each content line in the text
        self.marker_offset = 0
        self.padding = 0
        self.list_key: tuple[str, str] = ("", "")
        self.fence_char = ""
        self.fence_length = 0
        self.fence_offset = 0
        self.html_type = 0

    @property
    def last_child(self) -> _Block | None:
        return self.children[-1] if self.children else None

    def can_contain(self, kind: str) -> bool:
        if self.kind == "list":
            return kind == "item"
        if self.kind in ("document", "quote", "item", "footnote", "directive"):
            return kind != "item"
        return False


class _BlockParser:
    """CommonMark's block parsing strategy (after commonmark.js), with micromark's extensions.

    Collects the character ranges of code blocks and the lines of each paragraph and heading.
    """

    def __init__(self, text: str, options: _Options) -> None:
        self.text = text
        self.options = options
        self.doc = _Block("document", None)
        self.tip = self.doc
        self.old_tip = self.doc
        self.last_matched = self.doc
        self.all_closed = True
        self.code_ranges: list[tuple[int, int]] = []
        self.inline_blocks: list[tuple[list[tuple[int, int]], bool]] = []
        # The line being read.
        self.line = ""
        self.line_start = 0
        self.offset = 0
        self.column = 0
        self.next_nonspace = 0
        self.next_nonspace_column = 0
        self.indent = 0
        self.indented = False
        self.blank = False
        self.partial_tab = False

    def parse(self) -> None:
        start = 0
        for match in re.finditer(r"\r\n|\n|\r", self.text):
            self._incorporate(start, self.text[start : match.start()])
            start = match.end()
        self._incorporate(start, self.text[start:])
        while self.tip is not self.doc:
            self._finalize(self.tip)
        self._finalize(self.doc)

    # ------------------------------------------------------------------ cursor

    def _find_next_nonspace(self) -> None:
        i, columns = self.offset, self.column
        end = len(self.line) - len(self.line[i:].lstrip(" \t"))
        if "\t" not in self.line[i:end]:  # spaces only: one step (deep nesting stays linear)
            i, columns = end, columns + end - i
        while i < len(self.line):
            char = self.line[i]
            if char == " ":
                i += 1
                columns += 1
            elif char == "\t":
                i += 1
                columns += 4 - columns % 4
            else:
                break
        self.blank = i >= len(self.line)
        self.next_nonspace = i
        self.next_nonspace_column = columns
        self.indent = columns - self.column
        self.indented = self.indent >= _CODE_INDENT

    def _advance_next_nonspace(self) -> None:
        self.offset = self.next_nonspace
        self.column = self.next_nonspace_column
        self.partial_tab = False

    def _advance_offset(self, count: int, columns: bool) -> None:
        while count > 0 and self.offset < len(self.line):
            if self.line[self.offset] == "\t":
                to_tab = 4 - self.column % 4
                if columns:
                    self.partial_tab = to_tab > count
                    advance = min(to_tab, count)
                    self.column += advance
                    self.offset += 0 if self.partial_tab else 1
                    count -= advance
                else:
                    self.partial_tab = False
                    self.column += to_tab
                    self.offset += 1
                    count -= 1
            else:
                self.partial_tab = False
                self.offset += 1
                self.column += 1
                count -= 1

    def _peek(self, index: int) -> str:
        return self.line[index] if index < len(self.line) else ""

    def _rest(self) -> str:
        return self.line[self.next_nonspace :]

    # ------------------------------------------------------------------ tree

    def _add_child(self, kind: str) -> _Block:
        while not self.tip.can_contain(kind):
            self._finalize(self.tip)
        block = _Block(kind, self.tip)
        self.tip.children.append(block)
        self.tip = block
        return block

    def _finalize(self, block: _Block) -> None:
        if not block.open:
            return
        block.open = False
        if block.kind in ("paragraph", "heading") and block.lines:
            self.inline_blocks.append((block.lines, block.kind == "paragraph"))
        elif block.kind in ("fence", "indented") and block.fence_char != "$":
            self.code_ranges += block.lines
        if block.parent is not None:
            self.tip = block.parent

    def _close_unmatched(self) -> None:
        if not self.all_closed:
            while self.old_tip is not self.last_matched:
                parent = self.old_tip.parent
                self._finalize(self.old_tip)
                assert parent is not None
                self.old_tip = parent
            self.all_closed = True

    def _add_line(self, start: int | None = None) -> None:
        begin = self.offset if start is None else start
        self.tip.lines.append((self.line_start + begin, self.line_start + len(self.line)))

    # ------------------------------------------------------------------ continuation

    def _continue(self, block: _Block) -> int:
        """0: the line continues ``block``; 1: it does not; 2: it ended it (line used up)."""
        kind = block.kind
        if kind in ("document", "list"):
            return 0
        if kind == "quote":
            if not self.indented and self._peek(self.next_nonspace) == ">":
                self._advance_next_nonspace()
                self._advance_offset(1, False)
                if self._peek(self.offset) in (" ", "\t"):
                    self._advance_offset(1, True)
                return 0
            return 1
        if kind == "item":
            if self.blank:
                if not block.children:
                    return 1
                self._advance_next_nonspace()
            elif self.indent >= block.marker_offset + block.padding:
                self._advance_offset(block.marker_offset + block.padding, True)
            else:
                return 1
            return 0
        if kind == "footnote":
            if self.blank:
                self._advance_next_nonspace()
            elif self.indent >= _CODE_INDENT:
                self._advance_offset(_CODE_INDENT, True)
            else:
                return 1
            return 0
        if kind == "directive":
            close = _DIRECTIVE_CLOSE.match(self._rest())
            if self.indent <= 3 and close and len(close.group(1)) >= block.fence_length:
                self._finalize_tree(block)
                return 2
            skip = block.fence_offset
            while skip > 0 and self._peek(self.offset) in (" ", "\t"):
                self._advance_offset(1, True)
                skip -= 1
            return 0
        if kind in ("heading", "thematic"):
            return 1
        if kind == "fence":
            rest = self._rest()
            close = _CLOSING_FENCE.match(rest)
            if (
                self.indent <= 3
                and close
                and rest[0] == block.fence_char
                and len(close.group()) >= block.fence_length
                and set(close.group()) == {block.fence_char}
            ):
                self._add_line(self.next_nonspace)
                self._finalize(block)
                return 2
            skip = block.fence_offset
            while skip > 0 and self._peek(self.offset) in (" ", "\t"):
                self._advance_offset(1, True)
                skip -= 1
            return 0
        if kind == "indented":
            if self.indent >= _CODE_INDENT:
                self._advance_offset(_CODE_INDENT, True)
            elif self.blank:
                self._advance_next_nonspace()
            else:
                return 1
            return 0
        if kind == "html":
            return 1 if self.blank and block.html_type in (6, 7) else 0
        if kind == "paragraph":
            return 1 if self.blank else 0
        return 1

    def _finalize_tree(self, block: _Block) -> None:
        """Close ``block`` and everything open inside it (a directive's closing fence)."""
        open_blocks = []
        node: _Block | None = block
        while node is not None and node.open:
            open_blocks.append(node)
            node = node.last_child
        for node in reversed(open_blocks):
            self._finalize(node)
        self.tip = block.parent if block.parent is not None else self.doc
        self.old_tip = self.tip

    # ------------------------------------------------------------------ block starts

    def _starts(self, container: _Block) -> int:
        """Try each block start; 0: none, 1: a container opened, 2: a leaf opened."""
        for start in (
            self._start_quote,
            self._start_footnote,
            self._start_heading,
            self._start_fence,
            self._start_html,
            self._start_directive,
            self._start_setext,
            self._start_thematic,
            self._start_item,
            self._start_indented,
        ):
            result = start(container)
            if result:
                return result
        return 0

    def _start_quote(self, container: _Block) -> int:
        if self.indented or self._peek(self.next_nonspace) != ">":
            return 0
        self._advance_next_nonspace()
        self._advance_offset(1, False)
        if self._peek(self.offset) in (" ", "\t"):
            self._advance_offset(1, True)
        self._close_unmatched()
        self._add_child("quote")
        return 1

    def _start_footnote(self, container: _Block) -> int:
        if not self.options.footnotes or self.indented:
            return 0
        match = _FOOTNOTE.match(self._rest())
        if match is None:
            return 0
        self._advance_next_nonspace()
        self._advance_offset(len(match.group()), False)
        # All the whitespace after the colon goes (micromark), so no indented code starts here.
        self._find_next_nonspace()
        self._advance_next_nonspace()
        self._close_unmatched()
        self._add_child("footnote")
        return 1

    def _start_heading(self, container: _Block) -> int:
        if self.indented:
            return 0
        match = _ATX.match(self._rest())
        if match is None:
            return 0
        self._advance_next_nonspace()
        self._advance_offset(len(match.group()), False)
        self._close_unmatched()
        heading = self._add_child("heading")
        self._add_line()
        self._finalize(heading)
        self.offset = len(self.line)
        return 2

    def _start_fence(self, container: _Block) -> int:
        if self.indented:
            return 0
        rest = self._rest()
        match = _FENCE.match(rest)
        if match is None and self.options.math:
            match = _MATH_FENCE.match(rest)
        if match is None:
            return 0
        self._close_unmatched()
        fence = self._add_child("fence")
        fence.fence_char = match.group()[0]
        fence.fence_length = len(match.group())
        fence.fence_offset = self.indent
        self._advance_next_nonspace()  # the fence line is code from the fence on
        return 2

    def _start_html(self, container: _Block) -> int:
        if self.indented or self._peek(self.next_nonspace) != "<":
            return 0
        rest = self._rest()
        for html_type, pattern in enumerate(_HTML_OPEN, start=1):
            # A complete tag alone (type 7) cannot interrupt a paragraph; unlike commonmark.js,
            # micromark lets it start on a lazy line.
            if pattern.match(rest) and (html_type < 7 or container.kind != "paragraph"):
                self._close_unmatched()
                block = self._add_child("html")
                block.html_type = html_type
                return 2
        return 0

    def _start_directive(self, container: _Block) -> int:
        """A container (``:::name``, up to a closing ``:::``) or a leaf (``::name[label]``)."""
        if not self.options.directives or self.indented:
            return 0
        rest = self._rest()
        colons = _run_end(rest, 0, ":")
        if colons < 2:
            return 0
        name_end = _directive_name_end(rest, colons)
        if name_end is None:
            return 0
        end = _directive_tail_end(rest, name_end, allow_eol=False)
        if rest[end:].strip(" \t"):
            return 0
        self._close_unmatched()
        if colons == 2:
            leaf = self._add_child("leaf")
            self._finalize(leaf)  # its label is drawn, but holds no code worth keeping
            self.offset = len(self.line)
            return 2
        block = self._add_child("directive")
        block.fence_length = colons
        block.fence_offset = self.indent
        self.offset = len(self.line)
        return 1

    def _start_setext(self, container: _Block) -> int:
        if self.indented or container.kind != "paragraph" or not _SETEXT.match(self._rest()):
            return 0
        self._close_unmatched()
        self._finalize(container)  # a heading now, but it may begin with definitions all the same
        self.offset = len(self.line)
        return 2

    def _start_thematic(self, container: _Block) -> int:
        if self.indented or not _THEMATIC.match(self._rest()):
            return 0
        self._close_unmatched()
        block = self._add_child("thematic")
        self._finalize(block)
        self.offset = len(self.line)
        return 2

    def _start_item(self, container: _Block) -> int:
        if self.indented and container.kind != "list":
            return 0
        if self.indent >= 4:
            return 0
        rest = self._rest()
        # micromark also counts an indented code block (even across blank lines) as a block
        # being interrupted, where CommonMark counts only a paragraph.
        interrupting = container.kind == "paragraph" or (
            self.tip.kind == "indented" and self.tip.open
        )
        bullet = _BULLET.match(rest)
        ordered = None if bullet else _ORDERED.match(rest)
        if bullet is not None:
            marker, key = bullet.group(), ("bullet", bullet.group())
        elif ordered is not None and (not interrupting or ordered.group(1) == "1"):
            marker, key = ordered.group(), ("ordered", ordered.group(2))
        else:
            return 0
        after = self._peek(self.next_nonspace + len(marker))
        if after not in ("", " ", "\t"):
            return 0
        if interrupting and not self.line[self.next_nonspace + len(marker) :].strip(" \t"):
            return 0
        marker_offset = self.indent
        self._advance_next_nonspace()
        self._advance_offset(len(marker), True)
        spaces_column, spaces_offset = self.column, self.offset
        while True:
            self._advance_offset(1, True)
            if not (self.column - spaces_column < 5 and self._peek(self.offset) in (" ", "\t")):
                break
        blank_item = self._peek(self.offset) == ""
        spaces = self.column - spaces_column
        if spaces >= 5 or spaces < 1 or blank_item:
            padding = len(marker) + 1
            self.column, self.offset = spaces_column, spaces_offset
            if self._peek(self.offset) in (" ", "\t"):
                self._advance_offset(1, True)
        else:
            padding = len(marker) + spaces
        self._close_unmatched()
        if self.tip.kind != "list" or self.tip.list_key != key:
            listing = self._add_child("list")
            listing.list_key = key
        item = self._add_child("item")
        item.list_key = key
        item.marker_offset = marker_offset
        item.padding = padding
        return 1

    def _start_indented(self, container: _Block) -> int:
        if not self.indented or self.tip.kind == "paragraph" or self.blank:
            return 0
        self._advance_offset(_CODE_INDENT, True)
        self._close_unmatched()
        self._add_child("indented")
        return 2

    # ------------------------------------------------------------------ one line

    def _incorporate(self, line_start: int, line: str) -> None:
        self.line = line
        self.line_start = line_start
        self.offset = 0
        self.column = 0
        self.blank = False
        self.partial_tab = False
        self.old_tip = self.tip
        container = self.doc
        while True:
            child = container.last_child
            if child is None or not child.open:
                break
            container = child
            self._find_next_nonspace()
            result = self._continue(container)
            if result == 2:
                return
            if result == 1:
                assert container.parent is not None
                container = container.parent
                break
        self.all_closed = container is self.old_tip
        self.last_matched = container
        matched_leaf = container.kind != "paragraph" and container.kind in _LEAVES
        while not matched_leaf:
            self._find_next_nonspace()
            if not self.indented and not _MAYBE_SPECIAL.match(self._rest()):
                self._advance_next_nonspace()
                break
            result = self._starts(container)
            if result == 0:
                self._advance_next_nonspace()
                break
            container = self.tip
            if result == 2:
                matched_leaf = True
        if not self.all_closed and not self.blank and self.tip.kind == "paragraph":
            self._add_line()  # a lazy continuation line
            return
        self._close_unmatched()
        kind = container.kind
        if kind in _LEAVES and container.open:
            self._add_line()
            if (
                kind == "html"
                and 1 <= container.html_type <= 5
                and _HTML_CLOSE[container.html_type - 1].search(self.line[self.offset :])
            ):
                self._finalize(container)
        elif self.offset < len(self.line) and not self.blank:
            self._add_child("paragraph")
            self._advance_next_nonspace()
            self._add_line()
