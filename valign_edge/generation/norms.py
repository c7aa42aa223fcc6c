"""Norms: the value-bearing clauses of a document, and yes/no situations whose verdict they decide.

A 135M teacher cannot tell whether a document allows what a question asks about, so the verdict
is known by construction instead: a clause is parsed for its operator (``never``, ``must not``,
``has the right to``, ``may``, an imperative, a passive rule, ...) and its action, and questions are
built (``situations``) that ask about doing the action (or refusing it). The document's own clause is
the reason given in the faithful answer; the teacher later rephrases the questions and argues the
other side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from valign_edge.generation.filters import blocks, split_sentences, words

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
              r"\1 me"), (r"(?<!-)\byou\b(?!-)", "I"), (r"\bhis or her\b", "their"), (r"\bhis\b", "their"),
             (r"\bhim\b", "them"), (r"\bhimself\b", "themselves")]

_IMPERATIVES = ("treat", "follow", "use", "keep", "report", "declare", "stop", "tell", "respect", "protect",
                "explain", "disagree", "be", "act", "raise", "speak", "ask", "help", "listen", "avoid", "give",
                "show", "take", "make", "let", "share", "include", "welcome", "accept", "apologize", "focus",
                "lock", "check", "wash", "wear", "return", "protect", "support", "seek", "consult", "remember")

# A person named by role, as policies write their rules: "Employees must not ...", "Staff may ...",
# "Patrons have ...", optionally narrowed by who they are: "Staff who see a breach must ...".
_ONE_ROLE = (r"(?:employees?|staff(?:\s+members?)?|managers?|members?|contributors?|participants?|volunteers?|"
             r"workers?|team\s+members?|colleagues?|users?|everyone|everybody|anyone|people|students?|teachers?|"
             r"clinicians?|doctors?|nurses?|leaders?|maintainers?|moderators?|contractors?|officers?|directors?|"
             r"supervisors?|personnel|patients?|patrons?|customers?|clients?|visitors?|guests?|residents?|tenants?|"
             r"parents?|pupils?|trainees?|interns?|drivers?|agents?|coach(?:es)?|players?|adults?|referees?|"
             r"officials?|carers?|guardians?|coordinators?|helpers?|chaperones?)")
# one word that narrows a role without changing who asks: "every coach and regular volunteer"
_ROLE_ADJ = r"(?:(?:regular|new|paid|senior|junior|other|adult|club|team)\s+)?"
_ROLE = (rf"(?:(?:all|every|each|our|the|any)\s+)?{_ROLE_ADJ}{_ONE_ROLE}"
         rf"(?:\s+(?:and|or)\s+(?:(?:all|our|the)\s+)?{_ROLE_ADJ}{_ONE_ROLE})?"
         r"(?:\s+who\s+(?P<who>[^,]{3,80}?))?")
_NOT_PASSIVE = r"(?!be\s+\w+ed\b)"  # "must be reported" is a rule about a thing, not about the person
# A past participle after "be" / "is not": "-ed", "-en" and the common irregular ones.
_PARTICIPLE = (r"(?:\w+ed|\w+en|told|left|kept|sent|shown|given|taken|made|put|sold|read|held|paid|lent|sought|"
               r"brought|bought|caught|said|heard|found|built|set|let|done|seen|known|thrown|worn|drawn)")
# A passive rule about a thing or a person other than the asker: "Results are never left in a message",
# "Children under 16 must never be asked to interpret", "A breach must be reported within 24 hours".
_PASSIVE_SUBJECT = r"(?!no\b|nothing\b|nobody\b|no one\b|it\b|this\b|that\b|these\b|those\b|they\b|there\b|which\b)" \
                   r"(?P<a>[\w ,'-]{3,100}?)"
# Verbs that state a fact, not a house rule: "Nobody knows ...", "No one is above the law".
_STATE = (r"(?:is|has|was|does|needs|knows|likes|loves|wants|wishes|thinks|believes|expects|cares|minds|seems|feels|"
          r"means|deserves|understands|remembers|gets|wins|loses|owns)")
_RULES: list[tuple[str, re.Pattern]] = [
    (SHIELD, re.compile(r"^(?:no one|nobody|no person)(?:\s+who\s+(?P<who>[^,]{3,80}?))?\s+(?:shall|may|can|must|will)"
                        r"(?:\s+ever)?\s+be\s+(?P<a>.+)$", re.I)),
    (SHIELD, re.compile(rf"^(?:no one|nobody|no person)\s+(?:is|are|gets)\s+(?P<a>(?:\w+ly\s+)?{_PARTICIPLE}\b.*)$",
                        re.I)),
    (PRIVATE, re.compile(r"^(?P<a>[\w ,'-]+?)\s+(?:is|are|must be kept|shall be kept|is kept|are kept)\s+"
                         r"(?:strictly\s+)?(?:confidential|private|secret)\b.*$", re.I)),
    (DUTY, re.compile(r"^(?P<w>[\w ,'-]{3,40}?)\s+(?:is|are)\s+responsible\s+for\s+(?P<a>\w+ing\b.+)$", re.I)),
    (FORBID, re.compile(rf"^(?:no one|nobody|no\s+{_ONE_ROLE})\s+(?:shall|may|must|should|can)\s+(?P<a>.+)$", re.I)),
    # "No one drinks, smokes or vapes at training": a house rule in the present tense
    (FORBID, re.compile(rf"^(?:no one|nobody)\s+(?!{_STATE}\b)(?P<pres>\w+s\b.*)$", re.I)),
    (RIGHT, re.compile(r"^(?P<w>[\w ,-]{3,60}?)\s+(?:has|have)\s+(?:the|a|an|an equal|a prior|equal)\s+rights?\s+to\s+"
                       r"(?P<a>.+)$", re.I)),
    (RIGHT, re.compile(r"^(?P<w>everyone|all|every person)\s+(?:is|are)\s+entitled\s+(?:[\w ]*?\s)??to\s+(?P<a>.+)$",
                       re.I)),
    (BAN, re.compile(r"^(?P<a>.+?)\s+(?:is|are)\s+(?:not tolerated|forbidden|prohibited|not allowed|not permitted|"
                     r"not acceptable|unacceptable)\b.*$", re.I)),
    (BAN, re.compile(r"^(?P<a>.+?)\s+shall\s+be\s+prohibited\b.*$", re.I)),
    (FORBID, re.compile(r"^(?:(?P<s>we|you)\s+)?(?:must not|must never|shall not|should not|should never|"
                        r"may not|cannot|can not|never|do not|don't|will not|won't)\s+(?P<a>.+)$", re.I)),
    (REQUIRE, re.compile(r"^(?P<s>we|you)\s+(?:must|shall|should|are expected to|are required to|"
                         r"are encouraged to|have to|need to|always)\s+(?P<a>.+)$", re.I)),
    (PERMIT, re.compile(r"^(?P<s>you|we)\s+(?:may|can|are free to|are welcome to)\s+(?P<a>.+)$", re.I)),
    (FORBID, re.compile(rf"^(?P<r>{_ROLE})\s+(?:must not|must never|should not|should never|may not|shall not|cannot|"
                        rf"can not|will not|(?:is|are) not (?:allowed|permitted) to)\s+{_NOT_PASSIVE}(?P<a>.+)$", re.I)),
    (REQUIRE, re.compile(rf"^(?P<r>{_ROLE})\s+(?:must|shall|should|(?:is|are) (?:expected|required|encouraged) to|"
                         rf"ha(?:ve|s) to|needs? to|always)\s+{_NOT_PASSIVE}(?P<a>.+)$", re.I)),
    (PERMIT, re.compile(rf"^(?P<r>{_ROLE})\s+(?:may|can|(?:is|are) (?:free|welcome|allowed|permitted) to)\s+"
                        rf"{_NOT_PASSIVE}(?P<a>.+)$",
                        re.I)),
    (ALLOW, re.compile(r"^(?!no\b|nothing\b)(?P<a>[\w ,'-]{3,120}?)\s+(?:is|are)\s+(?:allowed|permitted|acceptable|fine|"
                       r"welcome)(?!\s+to\b)\b.*$", re.I)),
    (PERMIT, re.compile(r"^(?!nothing\b|no\b)(?P<a>[\w ,'-]+?)\s+may\s+be\s+(?P<v>\w+ed\b.*)$", re.I)),
    (FORBID, re.compile(rf"^{_PASSIVE_SUBJECT}\s+(?:must not|must never|should not|should never|may not|shall not|"
                        rf"cannot|can never|will not|will never|(?:is|are) not|(?:is|are) never)\s+(?:be\s+)?"
                        rf"(?P<v>{_PARTICIPLE}\b.*)$", re.I)),
    (REQUIRE, re.compile(rf"^{_PASSIVE_SUBJECT}\s+(?:must|shall|should|must always|should always|(?:is|are) to)\s+be\s+"
                         rf"(?P<v>{_PARTICIPLE}\b.*)$", re.I)),
]
# Words an action cannot start with: "..., never in ordinary recycling" names a place, not a deed.
_NOT_A_DEED = frozenset("in on at for with from by to of into onto under over through during after before than as "
                        "the a an".split())


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


def _not_a_thing(subject: str) -> bool:
    """A passive rule's subject that names nothing a question can ask about."""
    found = words(subject)
    if not found:
        return True
    first, last = found[0], found[-1]
    return bool(re.search(r"\b(?:no|nothing|none|nobody)\b", subject, re.I)) or \
        (first in _NOT_A_DEED and first not in ("the", "a", "an")) or last in ("that", "which", "who", "where")


def _base(verb: str) -> str:
    """``sees`` -> ``see``, ``watches`` -> ``watch``, ``has`` -> ``have``."""
    irregular = {"has": "have", "is": "am", "was": "was", "does": "do"}
    if verb.lower() in irregular:
        return irregular[verb.lower()]
    if re.fullmatch(r"[a-z]+[^s]s", verb):
        return verb[:-2] if verb.endswith(("ches", "shes", "sses", "xes")) else verb[:-1]
    return verb


def _as_mine(clause: str) -> str:
    """``sees a colleague breaking their promise`` -> ``see a colleague breaking my promise``."""
    first, _, rest = clause.strip().partition(" ")
    return _as_asker(_first_person(f"{_base(first)} {rest}".strip()))


def _present_as_base(text: str) -> str:
    """``drinks, smokes or vapes at training`` -> ``drink, smoke or vape at training``: the verbs a
    present-tense rule starts with."""
    m = re.match(r"\w+s(?:(?:,\s*(?:or\s+|and\s+)?|\s+(?:or|and)\s+)\w+s\b)*", text)
    if not m:
        return text
    return re.sub(r"\w+", lambda w: w[0] if w[0] in ("or", "and") else _base(w[0]), m[0]) + text[m.end():]


def _as_asker(text: str) -> str:
    """A rule about a role, asked by one of them: ``their`` -> ``my``, ``themselves`` -> ``myself``."""
    return re.sub(r"\btheir\b", "my", re.sub(r"\bthemselves\b", "myself", text))


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
        if groups.get("pres"):  # "No one drinks ... at training" -> "drink ... at training"
            return Norm(kind, _as_asker(_first_person(_tidy(_present_as_base(m["pres"])))), clause)
        if groups.get("v"):  # "Small gifts ... may be accepted", "Results are never left in a message"
            thing, done = _first_person(_lower_first(_tidy(m["a"]))), _tidy(m["v"])
            if _not_a_thing(thing) or re.search(r"\b(?:must|shall|may|should|will)\b", done, re.I):
                return None  # "Furthermore, no distinction ...", "on trips that are ...", two rules in one
            return Norm(kind, f"{thing} be {done}", clause, subject="passive")
        action = _tidy(m["a"])
        if len(words(action)) < 2 or (kind in (FORBID, REQUIRE, PERMIT) and words(action)[0] in _NOT_A_DEED):
            return None
        if kind == RIGHT:
            who = groups["w"].lower()
            everyone = who in ("everyone", "all", "every person", "each person") or who.startswith(("every", "all "))
            return Norm(kind, _first_person(action), clause, "I" if everyone else who)
        if kind == DUTY:
            return Norm(kind, _first_person(action), clause, groups["w"][0].lower() + groups["w"][1:])
        if kind == ALLOW:
            action = action.rstrip(", ")
        if kind == SHIELD and groups.get("who"):  # "Nobody who raises a concern will be treated unfairly"
            return Norm(kind, _lower_first(action), clause, f"who {groups['who']}")
        if kind in (BAN, SHIELD, PRIVATE, ALLOW):
            return Norm(kind, _lower_first(_first_person(action)), clause)
        if groups.get("r"):  # "Staff may bring their phone": the asker is one of the staff
            action = _as_asker(action)
            if groups.get("who"):  # "Staff who see a breach must report it" -> "report it if I see a breach"
                cond = f" if I {_as_mine(groups['who'])}" + cond
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
    # a lead-in that is a rule cut short ("Staff must not look up the records of:"): the item ends it
    if not re.search(r"\b(?:must|shall|should|may|cannot|never)\b", lead, re.I):
        return None  # a label ("Working from another place:"): the item is read on its own
    whole = f"{lead} {_lower_first(item)}"
    norm = parse(whole)
    return Norm(norm.kind, norm.action, f"{whole}.", norm.subject) if norm else None


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
