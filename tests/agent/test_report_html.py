"""The HTML report reads as the Markdown does: code and bold rendered, untrusted text escaped, and
the recovery verification's own figures shown once an action was verified."""

from __future__ import annotations

import re

from agent.report import inline_markdown
from tests.agent.test_recovery import paused


def test_inline_markdown_renders_code_and_bold_and_escapes_the_rest():
    html = str(inline_markdown("kill `879` **now** <script>alert(1)</script>"))
    assert html == (
        "kill <code>879</code> <strong>now</strong> &lt;script&gt;alert(1)&lt;/script&gt;"
    )


def test_the_html_report_has_no_literal_backticks_and_shows_the_verification(harness):
    _h, _actions, inv, view, mid = paused(harness)
    done = inv.approve(mid, "alice")
    assert done.status == "verified" and done.verification is not None
    html = inv.report_html(view.id)
    text = re.sub(r'src="data:[^"]*"', "", html)  # the plots are base64, not prose
    assert "`" not in text
    assert f"<code>{mid}</code>" in text
    assert "Verification: fallback_rate recovered" in text
    assert re.search(r"after the action vs [0-9.e-]+ before the onset", text)
    markdown = inv.get(view.id).report_markdown
    assert f"`{mid}`" in markdown and "Verification: fallback_rate recovered" in markdown
