"""Vigil in Slack: the command grammar, Block Kit messages, the Bolt bot and the notifier."""

from agent.slack.bot import SlackBot
from agent.slack.commands import parse_command, question_hints
from agent.slack.notifier import SlackNotifier

__all__ = ["SlackBot", "SlackNotifier", "parse_command", "question_hints"]
