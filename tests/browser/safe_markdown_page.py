"""A page for the browser test: Markdown documents drawn with st.markdown, as answers are.

SAFE_MARKDOWN_DOCUMENTS names a JSON file holding a list of documents. They are drawn through
safe_markdown, or as they are with ``?raw=1`` (the test's control), each in a container of its
own, followed by a last line that says the page is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from apps.safe_markdown import safe_markdown

documents = json.loads(Path(os.environ["SAFE_MARKDOWN_DOCUMENTS"]).read_text(encoding="utf-8"))
raw = st.query_params.get("raw") == "1"
for index, document in enumerate(documents):
    with st.container(key=f"document-{index}"):
        st.markdown(document if raw else safe_markdown(document))
st.caption("All documents drawn.")
