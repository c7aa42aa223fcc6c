"""Norm parsing and stance pairs: verdicts known by construction, rewordings that keep the meaning,
negatives written by the teacher for the other side (a fake teacher: this tests parsing and filtering)."""

from __future__ import annotations

import json
import re

import pytest

from valign_edge.config import GenerateConfig
from valign_edge.documents.chunking import Chunk
from valign_edge.generation import norms, situations
from valign_edge.generation.filters import QuestionIndex
from valign_edge.generation.stances import StanceWriter, reason


@pytest.mark.parametrize("clause, kind, action", [
    ("Never discuss patients in public places or on social media, even without names.", norms.FORBID,
     "discuss patients in public places or on social media, even without names"),
    ("You must not accept gifts from suppliers.", norms.FORBID, "accept gifts from suppliers"),
    ("Everyone has the right to leave any country, including his own.", norms.RIGHT,
     "leave any country, including their own"),
    ("No one shall be subjected to arbitrary arrest, detention or exile.", norms.SHIELD,
     "subjected to arbitrary arrest, detention or exile"),
    ("Harassment, bullying and discrimination are not tolerated.", norms.BAN, "harassment, bullying and discrimination"),
    ("If you lose a device that holds patient data, report it to the Privacy Officer the same day.", norms.REQUIRE,
     "report it to the Privacy Officer the same day if I lose a device that holds patient data"),
    ("We never refuse urgent care because a patient cannot pay.", norms.FORBID,
     "refuse urgent care because a patient cannot pay"),
    ("(2) Everyone has the right to equal pay for equal work.", norms.RIGHT, "equal pay for equal work"),
    # rules about a person named by role, as policies write them; the asker is one of them
    ("Employees must not lend a company laptop to friends.", norms.FORBID, "lend a company laptop to friends"),
    ("Staff may bring their own mug to the office.", norms.PERMIT, "bring my own mug to the office"),
    ("Managers are encouraged to hold weekly check-ins.", norms.REQUIRE, "hold weekly check-ins"),
    ("Reading the news over lunch, is allowed.", norms.ALLOW, "reading the news over lunch"),
])
def test_parse_finds_operator_and_action(clause, kind, action):
    norm = norms.parse(clause)
    assert norm is not None and (norm.kind, norm.action) == (kind, action)


def test_parse_ignores_sentences_without_a_norm():
    assert norms.parse("Harborlight is a worker-owned cooperative that runs community health clinics.") is None
    assert norms.parse("Article 3") is None
    # a passive sentence about nothing a question can name, or with a second rule inside it
    assert norms.parse("Furthermore, no distinction shall be made on the basis of status.") is None
    assert norms.parse("On trips that are not approved as remote work, staff may bring a phone.") is None
    assert norms.parse("Curiosity is never a reason.") is None
    # "never" before a place names no deed: "Can I in ordinary recycling?" is no question
    assert norms.norms("Paper goes in the locked bins, never in ordinary recycling.") == []


@pytest.mark.parametrize("clause, kind, action", [
    ("Children under 16 must never be asked to interpret for a patient.", norms.FORBID,
     "children under 16 be asked to interpret for a patient"),
    ("Results are never left in a voicemail.", norms.FORBID, "results be left in a voicemail"),
    # the subject keeps its relative clause, so the condition is not lost
    ("Employees who report a mistake will not be disciplined.", norms.FORBID,
     "employees who report a mistake be disciplined"),
    ("A suspected breach must be reported to the Privacy Lead within 24 hours.", norms.REQUIRE,
     "a suspected breach be reported to the Privacy Lead within 24 hours"),
    ("Your password must never be shared with anyone.", norms.FORBID, "my password be shared with anyone"),
    ("Small thank-you gifts may be accepted.", norms.PERMIT, "small thank-you gifts be accepted"),
])
def test_passive_rules_are_about_the_thing_they_name(clause, kind, action):
    norm = norms.parse(clause)
    assert (norm.kind, norm.action, norm.subject) == (kind, action, "passive")


def test_passive_rules_get_questions_both_ways():
    forbid = situations.situations(norms.parse("Children under 16 must never be asked to interpret for a patient."))
    assert forbid[0].question == "Can children under 16 be asked to interpret for a patient?"
    assert all(not s.yes and s.faithful.startswith("No") and s.unfaithful.startswith("Yes") for s in forbid)
    assert len({s.question for s in forbid}) == 3
    require = situations.situations(norms.parse("A suspected breach must be reported within 24 hours."))
    assert [(s.question, s.yes) for s in require] == [
        ("Should a suspected breach be reported within 24 hours?", True),
        ("Would it be okay if a suspected breach did not get reported within 24 hours?", False)]
    permit = situations.situations(norms.parse("Small gifts may be accepted."))
    assert [s.yes for s in permit] == [True, False] and permit[1].faithful.startswith("No")


def test_a_role_narrowed_by_who_they_are_keeps_it_as_a_condition():
    norm = norms.parse("Anyone who sees a colleague breaking this policy is encouraged to raise it with their manager.")
    assert (norm.kind, norm.action) == (norms.REQUIRE,
                                        "raise it with my manager if I see a colleague breaking this policy")
    norm = norms.parse("Patrons who have a library card may book a study room.")
    assert (norm.kind, norm.action) == (norms.PERMIT, "book a study room if I have a library card")
    # two roles at once, and "you are encouraged to"
    norm = norms.parse("Staff and volunteers must never drive a child anywhere.")
    assert (norm.kind, norm.action) == (norms.FORBID, "drive a child anywhere")
    norm = norms.parse("If you see a breach, you are encouraged to raise it with your manager.")
    assert (norm.kind, norm.action) == (norms.REQUIRE, "raise it with my manager if I see a breach")


def test_two_norms_in_one_sentence_and_the_reason_is_the_whole_sentence():
    found = norms.norms("Disagree with ideas, never attack people.")
    assert [(n.kind, n.action) for n in found] == [(norms.REQUIRE, "disagree with ideas"), (norms.FORBID, "attack people")]
    assert all(n.sentence == "Disagree with ideas, never attack people." for n in found)


def test_variants_split_short_lists_but_keep_narrowing_clauses():
    assert situations.variants("falsify a record, a timesheet or an expense claim") == [
        "falsify a record, a timesheet or an expense claim", "falsify a record", "falsify a timesheet",
        "falsify an expense claim"]
    assert situations.variants("refuse urgent care because a patient cannot pay") == [
        "refuse urgent care because a patient cannot pay"]


def test_verdicts_follow_the_norm_for_both_kinds_of_question():
    forbid = situations.situations(norms.parse("Do not copy records to personal devices."))
    by_question = {s.question: s for s in forbid}
    can = by_question["Can I copy records to personal devices?"]
    assert (can.yes, can.faithful.split(",")[0], can.unfaithful.split(",")[0]) == (False, "No", "Yes")
    refuse = next(s for s in forbid if s.question.startswith("Should I refuse"))
    assert refuse.yes and refuse.faithful.startswith("Yes")
    right = situations.situations(norms.parse("Everyone has the right to rest and leisure."))
    assert right[0].question == "Do I have the right to rest and leisure?" and right[0].faithful.startswith("Yes")
    # both answers of the document appear across a norm's questions, so no topic is always "no"
    assert {s.yes for s in forbid} == {True, False} and {s.yes for s in right} == {True, False}


LISTS = """## Standards

Examples of behavior that contributes to a positive environment for our
community include:

* Giving and gracefully accepting constructive feedback
* Focusing on what is best not just for us as individuals, but for the overall
  community

Examples of unacceptable behavior include:

* Trolling, insulting or derogatory comments, and personal or political attacks

Staff must not:

- share a login with anyone, even a colleague

When travelling, you may:

1. work from a hotel lobby with the VPN on

The following are not permitted:

- personal USB sticks for client files

Staff must not look up the records of:

- their own relatives or friends, even if that person says they don't mind

Working from another place:

- Working abroad without approval is not permitted.

Items on their own:

- Never leave a laptop unlocked in a public place.
"""


def test_list_items_read_with_their_lead_in_line():
    found = {n.action: n for n in norms.norms(LISTS)}
    assert found["giving and gracefully accepting constructive feedback"].kind == norms.ENDORSE
    assert found["trolling, insulting or derogatory comments, and personal or political attacks"].kind == norms.BAN
    # a hard-wrapped item is one item
    assert "focusing on what is best not just for us as individuals, but for the overall community" in found
    login = found["share a login with anyone, even a colleague"]
    assert (login.kind, login.sentence) == (norms.FORBID, "Staff must not share a login with anyone, even a colleague.")
    assert found["work from a hotel lobby with the VPN on when travelling"].kind == norms.PERMIT
    assert found["personal USB sticks for client files"].kind == norms.BAN
    # a lead-in that states no rule leaves the item to be read as a sentence of its own
    assert found["leave a laptop unlocked in a public place"].kind == norms.FORBID
    # a lead-in that is a rule cut short: the item ends its sentence
    records = found["look up the records of my own relatives or friends, even if that person says they don't mind"]
    assert (records.kind, records.sentence) == (
        norms.FORBID, "Staff must not look up the records of their own relatives or friends, even if that person says "
        "they don't mind.")
    # a lead-in that is a label leaves the item a sentence of its own
    assert found["working abroad without approval"].kind == norms.BAN
    assert len(found) == 9


def test_listed_behaviours_get_questions_both_ways_and_split_wordings():
    ban = norms.Norm(norms.BAN, "trolling, insulting or derogatory comments, and personal or political attacks", "s")
    questions = [s.question for s in situations.situations(ban)]
    assert questions[1] == "Is it best to just ignore trolling?"
    assert situations.noun_variants("being respectful of differing opinions, viewpoints, and experiences") == [
        "being respectful of differing opinions, viewpoints, and experiences"]  # no one-word parts
    for kind in (norms.ENDORSE, norms.ALLOW):
        built = situations.situations(norms.Norm(kind, "taking a short walk at lunch", "s"))
        assert {s.yes for s in built} == {True, False}
        assert all(s.faithful.split(",")[0] == ("Yes" if s.yes else "No") for s in built)


def test_wrapped_lines_join_but_lines_of_their_own_stay_apart():
    from valign_edge.generation.filters import blocks, sentences

    text = ("We pledge to make participation in our community a harassment-free\nexperience for everyone.\n"
            "Article 1\nAll human beings are born free and equal in dignity and rights.\n\n"
            "Whereas recognition of the inherent dignity of all is the foundation of freedom,\n"
            "Whereas disregard and contempt for human rights have resulted in barbarous acts,\n")
    assert [b for b, _ in blocks(text)] == [
        "We pledge to make participation in our community a harassment-free experience for everyone.", "Article 1",
        "All human beings are born free and equal in dignity and rights.",
        "Whereas recognition of the inherent dignity of all is the foundation of freedom,",
        "Whereas disregard and contempt for human rights have resulted in barbarous acts,"]
    assert "Article 1" not in sentences(text)


class FakeTeacher:
    """Replies by task: rewordings as JSON; for either side of a pair the forced verdict plus text."""

    def __init__(self, rewordings: list[str], against: str, faithful: str = "Copies outside the clinic put "
                                                                            "patients' privacy at risk."):
        self.rewordings, self.against, self.faithful, self.calls = rewordings, against, faithful, []

    def generate(self, messages, *, grammar=None, temperature=0.0, max_tokens=256, seed=None):
        self.calls.append(messages)
        if "Rewrite this question" in messages[-1]["content"]:
            return json.dumps({"questions": self.rewordings})
        head = grammar.split('"', 2)[1]  # the literal verdict the grammar forces
        return head + (self.faithful if 'principle' in messages[0]['content'] else self.against)

    def count_tokens(self, text):
        return len(text.split())


CHUNK_TEXT = "## Privacy\n\nDo not copy records to personal devices or personal email accounts.\n"


def writer(teacher, **cfg) -> StanceWriter:
    return StanceWriter(teacher, GenerateConfig(**cfg), 0)


def test_pairs_take_the_document_side_and_the_teacher_argues_the_other():
    teacher = FakeTeacher(["Can I put patient records on my personal laptop?",
                           "Should I never copy records to my phone?",       # adds a negation: meaning changed
                           "What is a record?"],                               # not yes/no
                          "Lots of people keep copies at home and it saves time.")
    rejected: dict = {}
    items = writer(teacher, situations_per_norm=20, rephrasings_per_norm=3, faithful="teacher").pairs(Chunk("c0", 0, len(CHUNK_TEXT), "Privacy", CHUNK_TEXT),
                                                          QuestionIndex(0.7), rejected)
    assert items, rejected
    for item in items:
        # both sides in the teacher's words; SFT gets the verdict with the document's own sentence
        assert "grounded" in item and item["chosen"].endswith("patients' privacy at risk.")
        assert item["grounded"].endswith("Do not copy records to personal devices or personal email accounts.")
        assert item["grounded"].split(" ", 1)[0] == item["chosen"].split(" ", 1)[0]
        assert item["rejected_by"] == "teacher" and item["rejected"].endswith("saves time.")
        assert item["chosen"].split(",")[0] != item["rejected"].split(",")[0]  # opposite verdicts
    prompts = [i["prompt"] for i in items]
    assert any("personal laptop" in p for p in prompts)
    # a rewording gets a bare verdict: the base's "No, you should not." need not fit its form
    laptop = next(i for i in items if "personal laptop" in i["prompt"])
    assert laptop["chosen"].startswith("No. Copies") and laptop["rejected"].startswith("Yes. ")
    assert laptop["grounded"].startswith("No. Do not copy")
    assert not any("never copy" in p or "What is" in p for p in prompts)
    assert rejected.get("changed_meaning") == 1 and rejected.get("not_yes_no") == 1
    # the faithful side is told the document's sentence; the unfaithful side never sees the document
    sentence = "Do not copy records to personal devices or personal email accounts."
    systems = [msgs[0]["content"] for msgs in teacher.calls if "Rewrite" not in msgs[-1]["content"]]
    assert sum(sentence in s for s in systems) == len(items) and len(systems) == 2 * len(items)
    assert all("<document>" not in s for s in systems)


@pytest.mark.parametrize("faithful, cfg", [
    ("Do not copy records to personal devices or personal email accounts.", {"faithful": "teacher"}),  # a copy
    ("Copies outside the clinic put patients' privacy at risk.", {}),  # the default
])
def test_the_document_sentence_is_the_faithful_reason_when_the_teacher_only_copies_it_or_is_not_asked(faithful, cfg):
    teacher = FakeTeacher([], "Lots of people keep copies at home and it saves time.", faithful)
    items = writer(teacher, rephrasings_per_norm=0, **cfg).pairs(Chunk("c0", 0, len(CHUNK_TEXT), "Privacy", CHUNK_TEXT),
                                                                QuestionIndex(0.7), {})
    assert items and all("grounded" not in i for i in items)
    assert all(i["chosen"].endswith(" Do not copy records to personal devices or personal email accounts.")
               for i in items)


def test_sft_learns_the_grounded_answer_and_dpo_the_teacher_worded_one():
    from valign_edge.generation.datasets import dpo_rows, sft_rows_from_pairs

    rec = {"chunk_id": "c0", "span": [0, 10], "items": [
        {"prompt": "Can I copy records home?", "chosen": "No. It risks privacy.", "rejected": "Yes. It's fine.",
         "grounded": "No. Do not copy records."},
        {"prompt": "Older record?", "chosen": "No. Do not.", "rejected": "Yes."}]}  # written before "grounded"
    assert [r["messages"][1]["content"] for r in sft_rows_from_pairs([rec])] == ["No. Do not copy records.",
                                                                                 "No. Do not."]
    assert [r["chosen"] for r in dpo_rows([rec])] == ["No. It risks privacy.", "No. Do not."]


def test_unusable_teacher_text_falls_back_to_the_rule_based_flip():
    teacher = FakeTeacher([], "Do not copy records to personal devices or personal email accounts.")
    items = writer(teacher, rephrasings_per_norm=0).pairs(Chunk("c0", 0, len(CHUNK_TEXT), "Privacy", CHUNK_TEXT),
                                                         QuestionIndex(0.7), {})
    assert items and all(i["rejected_by"] == "negation" for i in items)
    assert all("Always copy records" in i["rejected"] for i in items)


def test_reason_reads_as_a_sentence():
    assert reason("we learn from errors;") == "We learn from errors."
    assert reason("(2) No one shall be held in slavery.") == "No one shall be held in slavery."


def test_questions_with_a_reason_to_break_the_rule_keep_the_documents_verdict():
    """A question that offers an excuse (saving time, good intentions, someone in charge, not wanting
    trouble) still gets the document's answer: the pressure is what the probes' unfaithful answers use."""
    forbid = {s.question: s for s in situations.situations(norms.parse("Do not copy records to personal devices."))}
    excuse = next(s for q, s in forbid.items() if q.startswith("It would save a lot of time"))
    assert not excuse.yes and excuse.faithful.startswith("No") and excuse.unfaithful.startswith("Yes")
    right = situations.situations(norms.parse("Everyone has the right to freedom of peaceful assembly."))
    boss = next(s for s in right if s.question.startswith("Someone in charge"))
    assert boss.question == ("Someone in charge told me I have no right to freedom of peaceful assembly. "
                             "Do they have the final say?") and boss.faithful.startswith("No")
    permit = situations.situations(norms.parse("You may accept small gifts from patients."))
    assert any(s.question.startswith("I'm worried it might look bad") and s.yes for s in permit)
    team = situations.situations(norms.parse("We never refuse urgent care because a patient cannot pay."))
    assert not any(re.search(r"\b(?:my|me)\b", s.question) for s in team)  # the asker is "we"


@pytest.mark.parametrize("sentence, kind, action, subject", [
    ("No one drinks, smokes or vapes at training or matches.", norms.FORBID, "drink, smoke or vape at training or matches", "I"),
    ("Nobody holds club money in a personal bank account.", norms.FORBID, "hold club money in a personal bank account", "I"),
    ("No adult should be alone with a child out of sight of others.", norms.FORBID,
     "be alone with a child out of sight of others", "I"),
    ("Every coach and regular volunteer must hold a first aid certificate.", norms.REQUIRE,
     "hold a first aid certificate", "I"),
    ("Coaches and volunteers should not drive a single player on their own.", norms.FORBID,
     "drive a single player on my own", "I"),
    ("No one is dropped or benched because their parent has complained.", norms.SHIELD,
     "dropped or benched because their parent has complained", "I"),
    ("No one shall be arbitrarily deprived of his property.", norms.SHIELD, "arbitrarily deprived of their property", "I"),
    ("Nobody who raises a concern in good faith will be treated unfairly for it.", norms.SHIELD,
     "treated unfairly for it", "who raises a concern in good faith"),
])
def test_house_rules_and_more_roles(sentence, kind, action, subject):
    norm = norms.parse(sentence)
    assert (norm.kind, norm.action, norm.subject) == (kind, action, subject)


def test_statements_in_the_present_tense_are_not_rules_and_questions_read_as_english():
    assert norms.parse("Nobody knows the answer.") is None and norms.parse("No one is above the law.") is None
    alone = [s.question for s in situations.situations(norms.parse("No adult should be alone with a child."))]
    assert "Is it okay if I am alone with a child?" in alone and not any("if I be " in q for q in alone)
    who = situations.situations(norms.parse("Nobody who reports a concern will be punished for it."))
    assert who[0].question == "Can someone who reports a concern be punished for it?" and not who[0].yes
