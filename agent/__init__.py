"""The investigation agent and Vigil's front doors (CLI, HTTP server, Slack)."""
