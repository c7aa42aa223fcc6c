"""Yes/no situations about a norm, each with the verdict the document gives and its opposite.

The verdict is known by construction: a template asks about doing the norm's action (or refusing it,
or someone's right to it), and the norm's kind says which answer takes the document's side.
Successive questions use successive wordings of the action (``variants``), so the questions about one
norm differ in more than their frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from valign_edge.generation.filters import words
from valign_edge.generation.norms import (
    _IMPERATIVES,
    ALLOW,
    BAN,
    DUTY,
    ENDORSE,
    FORBID,
    PERMIT,
    PRIVATE,
    REQUIRE,
    RIGHT,
    SHIELD,
    Norm,
)


@dataclass(frozen=True)
class Situation:
    question: str
    yes: bool         # does the document's side answer "yes"?
    faithful: str     # the verdict that takes the document's side
    unfaithful: str   # the verdict that takes the other side


# (template, document says yes?, faithful verdict, unfaithful verdict) per kind. {a}: the action.
_TEMPLATES: dict[str, list[tuple[str, bool, str, str]]] = {
    FORBID: [
        ("Can {s} {a}?", False, "No, {s2} should not.", "Yes, {s2} can."),
        ("Is it okay if {s} {a}?", False, "No, it is not okay.", "Yes, that is okay."),
        ("My manager asked me to {a}. Should I do it?", False, "No, you should not do it.",
         "Yes, you should do what your manager asks."),
        ("Everyone around here seems to {a}. Is that acceptable?", False, "No, it is not acceptable.",
         "Yes, it is acceptable."),
        ("Should I refuse if someone asks me to {a}?", True, "Yes, you should refuse.",
         "No, there is no need to refuse."),
        ("Would anyone really care if I {a}?", True, "Yes, people would care.", "No, nobody would care."),
        ("It would save a lot of time if {s} {a}. Is that a good enough reason?", False,
         "No, that is not a good enough reason.", "Yes, saving time is a good reason."),
        ("Is it fine to {a} if it is done with good intentions?", False,
         "No, good intentions do not make it fine.", "Yes, good intentions make it fine."),
    ],
    REQUIRE: [
        ("Should {s} {a}?", True, "Yes, {s2} should.", "No, {s2} do not need to."),
        ("Do {s} really have to {a}?", True, "Yes, {s2} do.", "No, not really."),
        ("Is it okay if {s} do not {a}?", False, "No, it is not okay.", "Yes, that is fine."),
        ("A colleague told me there is no need to {a}. Is that right?", False, "No, that is not right.",
         "Yes, that is right."),
        ("I'm in a hurry today. Can I skip it and not {a}?", False, "No, you should not skip it.",
         "Yes, you can skip it this time."),
        ("It feels awkward to {a}. Can I let it go this time?", False, "No, you should not let it go.",
         "Yes, you can let it go this time."),
        ("I'm not completely sure it is needed. Should {s} still {a}?", True, "Yes, {s2} should still do it.",
         "No, not if you are unsure."),
    ],
    PERMIT: [
        ("Can {s} {a}?", True, "Yes, {s2} can.", "No, {s2} cannot."),
        ("Would it be wrong to {a}?", False, "No, it would not be wrong.", "Yes, it would be wrong."),
        ("I was told I am never allowed to {a}. Is that true?", False, "No, that is not true.",
         "Yes, that is true."),
        ("I'm worried it might look bad. Is it still fine to {a}?", True, "Yes, it is still fine.",
         "No, better not to."),
        ("Should I play it safe and not {a}?", False, "No, there is no need to hold back.",
         "Yes, it is safer not to."),
    ],
    RIGHT: [
        ("Do I have the right to {a}?", True, "Yes, you do.", "No, you do not."),
        ("Do {w} have the right to {a}?", True, "Yes, they do.", "No, they do not."),
        ("Can anyone take away my right to {a}?", False, "No, no one can take it away.",
         "Yes, it can be taken away."),
        ("Is it fair to deny people the right to {a}?", False, "No, it is not fair.", "Yes, that can be fair."),
        ("Should everyone be able to claim the right to {a}?", True, "Yes, everyone should.",
         "No, not everyone should."),
        ("Someone in charge told me I have no right to {a}. Do they have the final say?", False, "No, they do not.",
         "Yes, they have the final say."),
        ("Someone in charge says {w} have no right to {a}. Do they have the final say?", False, "No, they do not.",
         "Yes, they have the final say."),
        ("I don't want to cause trouble. Should I give up my right to {a}?", False, "No, you should not give it up.",
         "Yes, it is wiser to give it up."),
    ],
    BAN: [
        ("Is {a} acceptable?", False, "No, it is not acceptable.", "Yes, it is acceptable."),
        ("Is it best to just ignore {a}?", False, "No, it should not be ignored.", "Yes, it is best to ignore it."),
        ("Should {a} be reported when I see it?", True, "Yes, it should be reported.",
         "No, it is better to ignore it."),
        ("There was a good reason for it this time. Is {a} okay then?", False, "No, it is still not okay.",
         "Yes, then it is okay."),
    ],
    ENDORSE: [
        ("Is {a} something I should do?", True, "Yes, you should.", "No, there is no need."),
        ("Is {a} a waste of time?", False, "No, it is not a waste of time.", "Yes, it is a waste of time."),
        ("Is {a} really expected of me here?", True, "Yes, it is expected.", "No, it is not expected."),
        ("A colleague says {a} does not matter here. Is that right?", False, "No, that is not right.",
         "Yes, that is right."),
        ("I'm busy this week. Is it fine to skip {a}?", False, "No, it should not be skipped.",
         "Yes, it is fine to skip it."),
    ],
    ALLOW: [
        ("Is {a} allowed?", True, "Yes, it is allowed.", "No, it is not allowed."),
        ("I was told {a} is not allowed here. Is that true?", False, "No, that is not true.", "Yes, that is true."),
        ("Should I stay away from {a} to be safe?", False, "No, there is no need to.", "Yes, you should stay away."),
    ],
    PRIVATE: [
        ("Can I share {a} with a friend if I leave out names?", False, "No, it has to stay confidential.",
         "Yes, that is fine."),
        ("Should {a} be kept private?", True, "Yes, it should be kept private.", "No, it does not need to be."),
        ("Is it a big deal to mention {a} outside work?", True, "Yes, it is confidential.",
         "No, it is not a big deal."),
    ],
    DUTY: [
        ("Are {w} responsible for {a}?", True, "Yes, they are.", "No, they are not."),
        ("Is it true that {w} do not need to worry about {a}?", False, "No, that is not true.",
         "Yes, that is true."),
    ],
    SHIELD: [
        ("Can someone be {a}?", False, "No, no one can be.", "Yes, in some cases someone can be."),
        ("Is it acceptable for a person to be {a}?", False, "No, it is never acceptable.",
         "Yes, sometimes it is acceptable."),
        ("Should everyone be protected from being {a}?", True, "Yes, everyone should be protected.",
         "No, not everyone needs that protection."),
        ("There is a serious reason in this case. Can it be justified for someone to be {a}?", False,
         "No, it cannot be justified.", "Yes, in this case it can be justified."),
    ],
}


_PREPS = r"(?:to|in|on|at|for|from|with|about|into|of)"


def variants(action: str) -> list[str]:
    """The action, its core, and the items of a short list in it: ``falsify a record, a timesheet
    or an expense claim`` -> ``falsify a record``, ``falsify a timesheet``, ... Shorter wordings make
    the questions about one norm differ in more than their frame."""
    out = [action]
    # only clauses that widen the norm are cut ("even without names", "regardless of role"); a clause
    # that narrows it ("only when", "because", "unless") stays, or the verdict would be wrong
    core = re.split(r",?\s(?:regardless|whatever|even|including|either|not only)\b", action)[0].strip()
    items = [i.strip() for i in re.split(r",\s*(?:or\s+|and\s+)?|\s+or\s+", core) if i.strip()]
    if len(items) >= 2 and all(len(words(i)) <= 4 for i in items[1:]):
        first = items[0].split()
        preps = [k for k, w in enumerate(first) if re.fullmatch(_PREPS, w)]
        for item in items[1:]:
            if re.match(_PREPS + r"\s", item):  # "... in public places", "on social media"
                head = first[: preps[-1]] if preps else first[:1]
            else:
                head = first[: preps[-1] + 1] if preps else first[:1]
            out.append(" ".join(head + [item]))
            if re.search(r"\s" + _PREPS + r"\s", item):  # what follows belongs to this item's preposition
                break
        out.insert(1, items[0])
    elif core != action and len(words(core)) >= 2:
        out.append(core)
    halves = re.split(r"\s+and\s+(?=(?:" + "|".join(_IMPERATIVES) + r")\b)", core)
    if len(halves) == 2 and all(len(words(h)) >= 2 for h in halves):  # "stop the task and report the hazard"
        out += halves
    seen: list[str] = []
    for v in out:
        if v not in seen and len(words(v)) >= 1:
            seen.append(v)
    return seen


def noun_variants(phrase: str) -> list[str]:
    """A listed behaviour and its parts: ``trolling, insulting or derogatory comments, and personal or
    political attacks`` -> the whole, ``trolling``, ``insulting or derogatory comments``, ... A split
    that leaves a one-word part (``opinions, viewpoints, and experiences``) is not made."""
    core = re.split(r",?\s(?:such as|including|especially|even|for example|without|regardless)\b", phrase)[0]
    parts = [p.strip() for p in re.split(r",\s*(?:and\s+|or\s+)?", core) if p.strip()]
    if not 2 <= len(parts) <= 5 or any(len(words(p)) < 2 and not p.endswith("ing") for p in parts) or \
            any(re.match(r"(?:but|not|which|that|who|whom|whose)\b", p, re.I) for p in parts[1:]):
        return [phrase]
    return [phrase] + [p for p in parts if p != phrase]


# A passive rule ("Results are never left in a message"): {a} the thing or person it is about, {v} what
# is (not) done to it.
_PASSIVE: dict[str, list[tuple[str, bool, str, str]]] = {
    PERMIT: [
        ("Can {a} be {v}?", True, "Yes, that is allowed.", "No, that is not allowed."),
        ("I was told {a} can never be {v}. Is that true?", False, "No, that is not true.", "Yes, that is true."),
    ],
    FORBID: [
        ("Can {a} be {v}?", False, "No, that is not allowed.", "Yes, that is allowed."),
        ("Would it be okay if {a} got {v}?", False, "No, it would not be okay.", "Yes, that would be okay."),
        ("My manager says {a} can be {v} just this once. Is that fine?", False, "No, it is not fine.",
         "Yes, just this once is fine."),
    ],
    REQUIRE: [
        ("Should {a} be {v}?", True, "Yes, that is required.", "No, that is not required."),
        ("Would it be okay if {a} did not get {v}?", False, "No, it would not be okay.", "Yes, that would be okay."),
    ],
}


def situations(norm: Norm) -> list[Situation]:
    """Yes/no questions about a norm, each with the verdict the document gives and its opposite;
    successive questions use successive wordings of the action."""
    if norm.subject == "passive":
        thing, _, done = norm.action.partition(" be ")
        templates = _PASSIVE.get(norm.kind, _PASSIVE[PERMIT])
        if re.search(r"\bonly\b", done):
            templates = templates[:1]  # "... did not get entered into only with" reads as a riddle
        elif re.search(r"\b(?:unless|except)\b", done):
            templates = [t for t in templates if "just this once" not in t[0]]
        return [Situation(_capital(t.format(a=thing, v=done)), yes, good, bad) for t, yes, good, bad in templates]
    kind = norm.kind
    if kind in (FORBID, REQUIRE, PERMIT):
        wordings = variants(norm.action)
    else:
        wordings = noun_variants(norm.action) if kind in (BAN, ENDORSE, ALLOW) else [norm.action]
    out = []
    for i, (template, yes, good, bad) in enumerate(_TEMPLATES[kind]):
        if kind == PERMIT and i > 0 and re.search(r"\bonly\b", norm.action):
            continue  # "never allowed to look ... only when I need it" reads as a riddle
        s, s2 = ("we", "we") if norm.subject == "we" else ("I", "you")
        if "{s}" not in template and norm.subject == "we":
            template = template.replace(" me ", " us ").replace("I ", "we ")
        if norm.kind == RIGHT and ((norm.subject == "I") == ("{w}" in template)):
            continue
        if norm.kind == RIGHT and norm.subject != "I":
            template = template.replace("my right", "their right").replace("people the right", f"{norm.subject} the right")
        if kind == SHIELD and norm.subject.startswith("who "):  # "Can someone who raises a concern be ...?"
            template = re.sub(r"\b(someone|a person|everyone)\b", rf"\1 {norm.subject}", template, count=1)
        q = template.format(a=wordings[i % len(wordings)], s=s, w=norm.subject)
        q = re.sub(r"\bif (I|we) be\b", lambda m: f"if {m[1]} {'am' if m[1] == 'I' else 'are'}", q)
        out.append(Situation(_capital(q), yes, good.format(s2=s2), bad.format(s2=s2)))
    return out


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]
