"""Where the document's text goes: the notice the Start and Pipeline screens show for a teacher or judge
behind a server (the same lines and the same loopback-only rule as the CLI; nothing is contacted)."""

from __future__ import annotations

from rich.text import Text


def where_text_goes(teacher: str, judge: str = "", allow_remote: bool = False) -> Text | None:
    """One line per server model (the judge is the teacher when ``judge`` is empty), plus one when
    ``--allow-remote`` is on with no remote server chosen; None when everything runs in this process."""
    from valign_edge.backends import openai_teacher as oa
    from valign_edge.errors import UserError

    lines: list[tuple[str, str]] = []
    remote = False
    for role, spec in (("teacher", teacher.strip()), ("judge", judge.strip())):
        if not oa.is_server(spec):
            continue
        try:
            ep = oa.parse(spec, role)
            if oa.is_loopback(ep.host):
                lines.append((f"The {role} is a server on this machine ({ep.url}): the document stays here.", "dim"))
                continue
            oa.check_privacy(ep, role, allow_remote)
        except UserError as exc:
            lines.append((str(exc), "bold red"))
            continue
        remote = True
        notice = oa.remote_notice(spec, role) or ""
        lines.append(("Privacy: " + notice.removeprefix("--allow-remote: "), "bold yellow"))
    if allow_remote and not remote:
        lines.append(("--allow-remote is on: a teacher or judge server off this machine would receive the "
                      "document; none is chosen, so it stays on this machine.", "dim"))
    if not lines:
        return None
    text = Text()
    for i, (line, style) in enumerate(lines):
        text.append(("\n" if i else "") + line, style=style)
    return text
