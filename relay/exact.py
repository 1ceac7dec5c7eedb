"""Claim text that reaches the app exactly as the rules judged it, or not at all.

The relay judges claims, then hands them to the app as X-Auth-Request-* headers. Three things
would make the app read another value than the one judged (issue 14.3, 14.4):

- a control character, which no header may carry: stripping it made "ali\\tce" "alice";
- a space at either end: HTTP trims field values (RFC 9110 §5.5), so " alice " is "alice";
- in a list sent as one comma-separated header, a member with a comma: "x,admins" is read
  as "x" and "admins".

The first two are never part of a real name, so a claim the rules or the headers read that has
one refuses the session (relay/access.py). A comma is (an LDAP DN has several), so such a list
member is left out, for the rules and the header alike, rather than refuse its user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def flaw(text: str) -> str | None:
    """Why this text would not reach the app as it is (for the log: never the text), or
    None when it would."""
    if _CONTROL.search(text):
        return "control character"
    if text != text.strip():  # str.strip: every Unicode space, as lenient parsers trim
        return "leading or trailing space"
    return None


def listed(members: Iterable[str]) -> list[str]:
    """The members a comma-separated header carries one for one: those without a comma."""
    return [member for member in members if "," not in member]
