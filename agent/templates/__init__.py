"""Jinja2 templates of the agent reports (package data)."""
