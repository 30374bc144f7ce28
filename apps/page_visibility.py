"""Whether the browser shows the page: a tiny component around the Page Visibility API.

A console left open in a background tab or a minimised window need not refresh at all. The
component reports ``document.visibilityState`` when it mounts and on every
``visibilitychange`` event; a change reruns the app, which then draws its live parts without
``run_every`` while the page is hidden (Streamlit's browser side drops every fragment's timer
when a full run starts) and with it again once the page is shown.
"""

from __future__ import annotations

import streamlit as st

_JS = """
export default function ({ setStateValue }) {
  const report = () => setStateValue("hidden", document.visibilityState === "hidden");
  document.addEventListener("visibilitychange", report);
  if (document.visibilityState === "hidden") report();
  return () => document.removeEventListener("visibilitychange", report);
}
"""

_component = st.components.v2.component("tschat_page_visibility", js=_JS)


def page_hidden(key: str) -> bool:
    """Mount the component (once per page) and say whether the page is hidden now."""
    result = _component(key=key, default={"hidden": False}, on_hidden_change=lambda: None)
    return bool(result.get("hidden", False))
