"""PACS: search the hospital's archive, review a series, send the results back (sign-in required; ui/pacs_page.py)."""
from ui.pacs_page import render

render()
