"""Streamlit-side helpers of the dashboard.

``ui.state`` loads the model once per process and draws the shared sidebar;
``ui.charts`` builds plotly figures from plain data; ``ui.imaging``, ``ui.results``
and ``ui.batch_job`` are plain functions/classes that never import streamlit, so
they are unit-testable without a browser; ``ui.views`` holds drawing functions
shared by several pages.
"""
