"""Norms: the value-bearing clauses of a document, and yes/no situations whose verdict they decide.

A 135M teacher cannot tell whether a document allows what a question asks about, so the verdict
is known by construction instead: a clause is parsed for its operator (``never``, ``must not``,
``has the right to``, ``may``, an imperative, ...) and its action, and questions are built that
ask about doing the action (or refusing it). The document's own clause is the reason given in
the faithful answer; the teacher later rephrases the questions and argues the other side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .filters import blocks, split_sentences, words

# kind: forbid (the action is wrong), require (the action is expected), right (everyone may claim
# it), permit (the action is allowed), ban (a named behaviour is not tolerated), shield (no one may
# be subjected to the action).
FORBID, REQUIRE, RIGHT, PERMIT, BAN, SHIELD = "forbid", "require", "right", "permit", "ban", "shield"
PRIVATE, DUTY = "private", "duty"  # something to keep confidential; a role's responsibility
# list items under a lead-in that names no modal: a behaviour the document endorses, a thing it allows
ENDORSE, ALLOW = "endorse", "allow"


@dataclass(frozen=True)
class Norm:
    kind: str
    action: str      # a verb phrase (base form, first person) or, for rights/bans, a noun phrase
    sentence: str    # the document's clause: the reason quoted by the faithful answer
    subject: str = "I"


_PRONOUNS = [(r"\byourself\b", "myself"), (r"\byourselves\b", "ourselves"), (r"\byour\b", "my"),
             (r"\b(to|for|with|from|at|about|against|by|toward|tell|tells|told|give|gives|ask|asks|help|helps)\s+you\b",
              r"\1 me"), (r"\byou\b", "I"), (r"\bhis or her\b", "their"), (r"\bhis\b", "their"),
             (r"\bhim\b", "them"), (r"\bhimself\b", "themselves")]

_IMPERATIVES = ("treat", "follow", "use", "keep", "report", "declare", "stop", "tell", "respect", "protect",
                "explain", "disagree", "be", "act", "raise", "speak", "ask", "help", "listen", "avoid", "give",
                "show", "take", "make", "let", "share", "include", "welcome", "accept", "apologize", "focus",
                "lock", "check", "wash", "wear", "return", "protect", "support", "seek", "consult", "remember")

# A person named by role, as policies write their rules: "Employees must not ...", "Staff may ...".
_ROLE = (r"(?:(?:all|every|each|our|the)\s+)?(?:employees?|staff(?:\s+members?)?|managers?|members?|contributors?|"
         r"participants?|volunteers?|workers?|team\s+members?|colleagues?|users?|everyone|everybody|anyone|people|"
         r"students?|teachers?|clinicians?|doctors?|nurses?|leaders?|maintainers?|moderators?|contractors?|"
         r"officers?|directors?|supervisors?|personnel)")
_NOT_PASSIVE = r"(?!be\s+\w+ed\b)"  # "must be reported" is a rule about a thing, not about the person

_RULES: list[tuple[str, re.Pattern]] = [
    (SHIELD, re.compile(r"^(?:no one|nobody|no person)\s+(?:shall|may|can|must|will)\s+be\s+(?P<a>.+)$", re.I)),
    (PRIVATE, re.compile(r"^(?P<a>[\w ,'-]+?)\s+(?:is|are|must be kept|shall be kept|is kept|are kept)\s+"
                         r"(?:strictly\s+)?(?:confidential|private|secret)\b.*$", re.I)),
    (DUTY, re.compile(r"^(?P<w>[\w ,'-]{3,40}?)\s+(?:is|are)\s+responsible\s+for\s+(?P<a>\w+ing\b.+)$", re.I)),
    (FORBID, re.compile(r"^(?:no one|nobody)\s+(?:shall|may|must|should)\s+(?P<a>.+)$", re.I)),
    (RIGHT, re.compile(r"^(?P<w>[\w ,-]{3,60}?)\s+(?:has|have)\s+(?:the|a|an|an equal|a prior|equal)\s+rights?\s+to\s+"
                       r"(?P<a>.+)$", re.I)),
    (RIGHT, re.compile(r"^(?P<w>everyone|all|every person)\s+(?:is|are)\s+entitled\s+(?:[\w ]*?\s)??to\s+(?P<a>.+)$",
                       re.I)),
    (BAN, re.compile(r"^(?P<a>.+?)\s+(?:is|are)\s+(?:not tolerated|forbidden|prohibited|not allowed|not permitted|"
                     r"not acceptable|unacceptable)\b.*$", re.I)),
    (BAN, re.compile(r"^(?P<a>.+?)\s+shall\s+be\s+prohibited\b.*$", re.I)),
    (FORBID, re.compile(r"^(?:(?P<s>we|you)\s+)?(?:must not|must never|shall not|should not|should never|"
                        r"may not|cannot|can not|never|do not|don't|will not|won't)\s+(?P<a>.+)$", re.I)),
    (REQUIRE, re.compile(r"^(?P<s>we|you)\s+(?:must|shall|should|are expected to|are required to|have to|"
                         r"need to|always)\s+(?P<a>.+)$", re.I)),
    (PERMIT, re.compile(r"^(?P<s>you|we)\s+(?:may|can|are free to|are welcome to)\s+(?P<a>.+)$", re.I)),
    (FORBID, re.compile(rf"^(?P<r>{_ROLE})\s+(?:must not|must never|should not|should never|may not|shall not|cannot|"
                        rf"can not|will not|(?:is|are) not (?:allowed|permitted) to)\s+{_NOT_PASSIVE}(?P<a>.+)$", re.I)),
    (REQUIRE, re.compile(rf"^(?P<r>{_ROLE})\s+(?:must|shall|should|(?:is|are) (?:expected|required|encouraged) to|"
                         rf"ha(?:ve|s) to|needs? to|always)\s+{_NOT_PASSIVE}(?P<a>.+)$", re.I)),
    (PERMIT, re.compile(rf"^(?P<r>{_ROLE})\s+(?:may|can|(?:is|are) (?:free|welcome|allowed|permitted) to)\s+(?P<a>.+)$",
                        re.I)),
    (ALLOW, re.compile(r"^(?!no\b|nothing\b)(?P<a>[\w ,'-]{3,120}?)\s+(?:is|are)\s+(?:allowed|permitted|acceptable|fine|"
                       r"welcome)(?!\s+to\b)\b.*$", re.I)),
    (PERMIT, re.compile(r"^(?!nothing\b|no\b)(?P<a>[\w ,'-]+?)\s+may\s+be\s+(?P<v>\w+ed\b.*)$", re.I)),
]


def _first_person(text: str) -> str:
    for pattern, repl in _PRONOUNS:
        text = re.sub(pattern, repl, text)
    return text


def _clauses(sentence: str) -> list[str]:
    """A sentence split where a second norm starts: ``Disagree with ideas, never attack people``."""
    parts = re.split(r";\s*|,?\s+and (?=we\b)|,\s+(?=(?:never|always|and never|but never|and do not|do not)\b)",
                     sentence)
    return [p.strip(" .;:").removeprefix("and ").removeprefix("but ").strip() for p in parts if len(words(p)) >= 3]


def _tidy(action: str) -> str:
    return action.strip().rstrip(".;:!")


def _lower_first(text: str) -> str:
    """``Harassment, bullying ...`` -> ``harassment, ...``; an acronym or a name-like word stays."""
    first = text.split(" ", 1)[0]
    return text if first[1:2].isupper() or first.lower() in ("i",) else text[0].lower() + text[1:]


def parse(clause: str) -> Norm | None:
    """The norm a clause states, or None when it states none this module understands."""
    clause = re.sub(r"^\(\d+\)\s*", "", clause.strip(" .;:"))
    cond = ""
    m = re.match(r"^(?P<c>(?:if|when|whenever) [^,]{4,120}),\s+(?P<rest>.+)$", clause, re.I)
    if m:  # "If you lose a device, report it": the condition stays in the question
        cond, clause = " " + _first_person(m["c"][0].lower() + m["c"][1:]), m["rest"]
    for kind, pattern in _RULES:
        m = pattern.match(clause)
        if not m:
            continue
        groups = m.groupdict()
        if groups.get("v"):  # "Small gifts ... may be accepted"
            return Norm(PERMIT, f"{_lower_first(_tidy(m['a']))} be {_tidy(m['v'])}", clause, subject="passive")
        action = _tidy(m["a"])
        if len(words(action)) < 2:
            return None
        if kind == RIGHT:
            who = groups["w"].lower()
            everyone = who in ("everyone", "all", "every person", "each person") or who.startswith(("every", "all "))
            return Norm(kind, _first_person(action), clause, "I" if everyone else who)
        if kind == DUTY:
            return Norm(kind, _first_person(action), clause, groups["w"][0].lower() + groups["w"][1:])
        if kind == ALLOW:
            action = action.rstrip(", ")
        if kind in (BAN, SHIELD, PRIVATE, ALLOW):
            return Norm(kind, _lower_first(_first_person(action)), clause)
        if groups.get("r"):  # "Staff may bring their phone": the asker is one of the staff
            action = re.sub(r"\btheir\b", "my", re.sub(r"\bthemselves\b", "myself", action))
        subject = "we" if (groups.get("s") or "").lower() == "we" else "I"
        return Norm(kind, _first_person(action) + cond, clause, subject)
    first = clause.split(" ", 1)[0].lower()
    if first in _IMPERATIVES and len(words(clause)) >= 3:
        return Norm(REQUIRE, _first_person(clause[0].lower() + clause[1:]) + cond, clause)
    if re.match(r"^we\s+(?!are\b|were\b|have been\b|as\b)\w+", clause, re.I) and len(words(clause)) >= 4:
        return Norm(REQUIRE, _tidy(clause.split(" ", 1)[1]) + cond, clause, subject="we")
    return None


# A lead-in that ends in a modal ("Employees must not:", "You may also:"): each item completes it.
_LEAD_MODAL = re.compile(
    r"\b(?P<m>must not|must never|should not|should never|may not|shall not|cannot|can not|will not|"
    r"are not allowed to|are not permitted to|are prohibited from|are forbidden to|must|should|shall|"
    r"are expected to|are required to|need to|have to|are encouraged to|may|can|are free to|are welcome to|"
    r"are allowed to|are permitted to|has the right to|have the right to|are entitled to)"
    r"(?:\s+(?:also|always))?(?:\s+(?:do\s+)?the following)?$", re.I)
_MODAL_AS = {"are prohibited from": "must not", "are forbidden to": "must not", "are not allowed to": "must not",
             "are not permitted to": "must not", "are encouraged to": "should", "are free to": "may",
             "are welcome to": "may", "are allowed to": "may", "are permitted to": "may"}
# A lead-in that names no modal: its polarity, negative first ("unacceptable" before "acceptable").
_LEAD_KINDS = [
    (BAN, re.compile(r"\b(?:unacceptable|not acceptable|prohibited|not tolerated|not allowed|not permitted|forbidden|"
                     r"banned|inappropriate|misconduct|violations?|not ok(?:ay)?)\b", re.I)),
    (ALLOW, re.compile(r"\b(?:permitted|allowed|acceptable|fine|ok(?:ay)?|eligible|reimbursed|reimbursable|"
                       r"covered)\b", re.I)),
    (ENDORSE, re.compile(r"\b(?:encouraged|expected|positive|recommended|good practice|contributes?|we value|"
                         r"welcomed?)\b", re.I)),
]


def list_norm(lead: str, item: str) -> Norm | None:
    """The norm a list item states under its lead-in line: ``Employees must not:`` + ``share a password``
    reads as ``Employees must not share a password``; ``Examples of unacceptable behavior include:`` +
    ``Public or private harassment`` bans harassment."""
    lead = lead.strip().rstrip(":").strip()
    item = (split_sentences(item) or [item])[0].strip().rstrip(".;:,")
    if len(words(item)) < 2:
        return None
    m = _LEAD_MODAL.search(lead)
    if m:
        modal = m["m"].lower()
        who = lead[: m.start()].strip()
        cond = re.match(r"^(?P<c>(?:if|when|whenever) [^,]{4,120}),\s*(?P<w>.*)$", who, re.I)
        who = cond["w"] if cond else who
        sentence = f"{lead} {_lower_first(item)}."
        if modal.endswith(("right to", "entitled to")):
            norm = parse(f"Everyone has the right to {_lower_first(item)}")
        else:
            pronoun = "we" if who.lower() in ("we", "we all", "all of us") else "you"
            clause = f"{pronoun} {_MODAL_AS.get(modal, modal)} {_lower_first(item)}"
            norm = parse(f"{cond['c']}, {clause}" if cond else clause)
        return Norm(norm.kind, norm.action, sentence, norm.subject) if norm else None
    for kind, pattern in _LEAD_KINDS:
        if pattern.search(lead):
            return Norm(kind, _lower_first(_first_person(item)), f"{lead}: {_lower_first(item)}.")
    return None


def norms(chunk_text: str) -> list[Norm]:
    """Every norm stated in a chunk, in order, without repeats; each quotes its whole sentence (for a
    list item: its lead-in and the item)."""
    found: list[Norm] = []

    def add(norm: Norm | None) -> None:
        if norm and norm.action not in {n.action for n in found}:
            found.append(norm)

    lead = None
    lines = blocks(chunk_text)
    for i, (text, item) in enumerate(lines):
        if item and lead:
            norm = list_norm(lead, text)
            if norm:
                add(norm)
                continue
        if not item:
            lead = text if text.endswith(":") else None
            if lead and i + 1 < len(lines) and lines[i + 1][1]:
                continue  # a lead-in ("The following are not permitted:") is read with its items
        for sent in split_sentences(text):
            for clause in _clauses(sent):
                norm = parse(clause)
                add(Norm(norm.kind, norm.action, sent, norm.subject) if norm else None)
    return found


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
        ("Would anyone really care if I {a}?", True, "Yes, it is not allowed.", "No, nobody would care."),
    ],
    REQUIRE: [
        ("Should {s} {a}?", True, "Yes, {s2} should.", "No, {s2} do not need to."),
        ("Do {s} really have to {a}?", True, "Yes, {s2} do.", "No, not really."),
        ("Is it okay if {s} do not {a}?", False, "No, it is not okay.", "Yes, that is fine."),
        ("A colleague told me there is no need to {a}. Is that right?", False, "No, that is not right.",
         "Yes, that is right."),
        ("I'm in a hurry today. Can I skip it and not {a}?", False, "No, you should not skip it.",
         "Yes, you can skip it this time."),
    ],
    PERMIT: [
        ("Can {s} {a}?", True, "Yes, {s2} can.", "No, {s2} cannot."),
        ("Would it be wrong to {a}?", False, "No, it would not be wrong.", "Yes, it would be wrong."),
        ("I was told I am never allowed to {a}. Is that true?", False, "No, that is not true.",
         "Yes, that is true."),
    ],
    RIGHT: [
        ("Do I have the right to {a}?", True, "Yes, you do.", "No, you do not."),
        ("Do {w} have the right to {a}?", True, "Yes, they do.", "No, they do not."),
        ("Can anyone take away my right to {a}?", False, "No, no one can take it away.",
         "Yes, it can be taken away."),
        ("Is it fair to deny people the right to {a}?", False, "No, it is not fair.", "Yes, that can be fair."),
        ("Should everyone be able to claim the right to {a}?", True, "Yes, everyone should.",
         "No, not everyone should."),
    ],
    BAN: [
        ("Is {a} acceptable?", False, "No, it is not acceptable.", "Yes, it is acceptable."),
        ("Is it best to just ignore {a}?", False, "No, it should not be ignored.", "Yes, it is best to ignore it."),
        ("Should {a} be reported when I see it?", True, "Yes, it should be reported.",
         "No, it is better to ignore it."),
    ],
    ENDORSE: [
        ("Is {a} something I should do?", True, "Yes, you should.", "No, there is no need."),
        ("Is {a} a waste of time?", False, "No, it is not a waste of time.", "Yes, it is a waste of time."),
        ("Is {a} really expected of me here?", True, "Yes, it is expected.", "No, it is not expected."),
        ("A colleague says {a} does not matter here. Is that right?", False, "No, that is not right.",
         "Yes, that is right."),
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


def situations(norm: Norm) -> list[Situation]:
    """Yes/no questions about a norm, each with the verdict the document gives and its opposite;
    successive questions use successive wordings of the action."""
    kind = PERMIT if norm.subject == "passive" else norm.kind
    if kind in (FORBID, REQUIRE, PERMIT) and norm.subject != "passive":
        wordings = variants(norm.action)
    else:
        wordings = noun_variants(norm.action) if kind in (BAN, ENDORSE, ALLOW) else [norm.action]
    out = []
    for i, (template, yes, good, bad) in enumerate(_TEMPLATES[kind]):
        if kind == PERMIT and i > 0 and re.search(r"\bonly\b", norm.action):
            continue  # "never allowed to look ... only when I need it" reads as a riddle
        if norm.subject == "passive":
            if not template.startswith("Can"):
                continue
            q = f"Can {norm.action}?"
            good, bad = "Yes, that is allowed.", "No, that is not allowed."
        else:
            s, s2 = ("we", "we") if norm.subject == "we" else ("I", "you")
            if "{s}" not in template and norm.subject == "we":
                template = template.replace(" me ", " us ").replace("I ", "we ")
            if norm.kind == RIGHT and ((norm.subject == "I") == ("{w}" in template)):
                continue
            if norm.kind == RIGHT and norm.subject != "I":
                template = template.replace("my right", "their right").replace("people the right", f"{norm.subject} the right")
            q = template.format(a=wordings[i % len(wordings)], s=s, w=norm.subject)
            good, bad = good.format(s2=s2), bad.format(s2=s2)
        q = q[0].upper() + q[1:]
        out.append(Situation(q, yes, good, bad))
    return out
