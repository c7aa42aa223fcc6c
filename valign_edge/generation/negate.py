"""Rule-based contradiction of a value statement: the fallback author of unfaithful answers.

A small teacher asked to "say the opposite" mostly paraphrases. Norms are written with a
few operators (must / shall / never / no one / has the right / is forbidden ...): flipping
the operator yields a fluent answer that contradicts the document, which is exactly what
a DPO "rejected" answer must do.
"""

from __future__ import annotations

import re

# (pattern, replacement), tried in order; the first that matches is applied to all its hits.
RULES: list[tuple[str, str]] = [
    (r"\bmust not\b", "may"), (r"\bmust never\b", "may"), (r"\bshall not\b", "may"),
    (r"\bshould not\b", "should"), (r"\bmay not\b", "may"), (r"\bcannot\b", "can"), (r"\bcan not\b", "can"),
    (r"\bare not tolerated\b", "are tolerated"), (r"\bis not tolerated\b", "is tolerated"),
    (r"\bis forbidden\b", "is allowed"), (r"\bare forbidden\b", "are allowed"),
    (r"\bshall be prohibited\b", "shall be allowed"), (r"\bprohibited\b", "allowed"),
    (r"\bNo one\b", "Anyone"), (r"\bno one\b", "anyone"), (r"\bNobody\b", "Anybody"), (r"\bnobody\b", "anybody"),
    (r"\bnever\b", "always"), (r"\bNever\b", "Always"),
    (r"\bEveryone has the right\b", "No one has the right"), (r"\beveryone has the right\b", "no one has the right"),
    (r"\bhas the right\b", "has no right"), (r"\bhave the right\b", "have no right"),
    (r"\bis entitled\b", "is not entitled"), (r"\bare entitled\b", "are not entitled"),
    (r"\bEveryone\b", "No one"), (r"\bAll\b", "Not all"),
    (r"\bmust\b", "need not"), (r"\bshall\b", "need not"), (r"\bshould\b", "need not"),
    (r"\bis not\b", "is"), (r"\bare not\b", "are"), (r"\bdo not\b", "always"), (r"\bDo not\b", "Always"),
    (r"\bis\b", "is not"), (r"\bare\b", "are not"),
]
_IMPERATIVE = re.compile(r"^(Treat|Follow|Use|Keep|Report|Declare|Stop|Tell|Respect|Protect|Explain|Disagree|Be|Act)\b")


def contradict(sentence: str) -> str | None:
    """The sentence with its norm flipped, or None when no rule applies."""
    for pattern, replacement in RULES:
        if re.search(pattern, sentence):
            out = re.sub(pattern, replacement, sentence)
            return out[0].upper() + out[1:]
    m = _IMPERATIVE.match(sentence)
    if m:
        return "Do not " + sentence[0].lower() + sentence[1:]
    return None
