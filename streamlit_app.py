"""MRI slice review dashboard — entry point.

    streamlit run streamlit_app.py

Settings: ``app_config.py`` (model folder, browsable roots, data folder) and
``.streamlit/config.toml`` (server: localhost, upload limit, XSRF). The model is
loaded once per server process; pages live in ``pages/``.
"""
from __future__ import annotations

import streamlit as st

from ui import state

st.set_page_config(page_title="MRI slice review", layout="wide")

navigation = st.navigation([
    st.Page(state.SINGLE_PAGE, title="Single scan", icon=":material/radiology:", url_path="single-scan",
            default=True),
    st.Page(state.BATCH_PAGE, title="Batch review", icon=":material/folder_open:", url_path="batch-review"),
    st.Page(state.STUDY_PAGE, title="Study review", icon=":material/stacks:", url_path="study-review"),
    st.Page(state.METRICS_PAGE, title="Model metrics", icon=":material/monitoring:", url_path="model-metrics"),
    st.Page(state.PACS_PAGE, title="PACS", icon=":material/dns:", url_path="pacs"),
])
state.bootstrap()  # model + sidebar; shows the error and stops if the model cannot be loaded
navigation.run()
