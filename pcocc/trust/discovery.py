"""Meta discovery (appc style): ``https://NAME?ac-discovery=1`` answers an HTML page whose
``<meta name="ac-discovery" content="PREFIX TEMPLATE">`` and
``<meta name="ac-discovery-pubkeys" content="PREFIX URL">`` say where images and keys of
names under PREFIX are. Templates use {name}, {version}, {os}, {arch}, {ext}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser

from pcocc.errors import NotFound, PcoccError
from pcocc.trust import http
from pcocc.trust.prefix import NAME_RE, covers

log = logging.getLogger(__name__)

#: discovery pages larger than this are refused (a page is a few hundred bytes)
MAX_PAGE = 256 * 1024
_MAX_TAGS = 64


@dataclass(frozen=True)
class MetaTag:
    kind: str      # "ac-discovery" or "ac-discovery-pubkeys"
    prefix: str
    target: str    # a URL template or a key URL


class _MetaParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[MetaTag] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta" or len(self.tags) >= _MAX_TAGS:
            return
        a = {k.lower(): (v or "") for k, v in attrs}
        kind = a.get("name", "").strip().lower()
        if kind not in ("ac-discovery", "ac-discovery-pubkeys"):
            return
        words = a.get("content", "").split()
        if len(words) != 2 or not NAME_RE.match(words[0]):
            return  # malformed: ignored, like any other noise of the page
        target = words[1]
        if not target.startswith(("https://", "http://")) or any(
                c.isspace() or ord(c) < 0x20 for c in target):
            return
        self.tags.append(MetaTag(kind, words[0], target))

    handle_startendtag = handle_starttag


def parse_page(html: str) -> list[MetaTag]:
    """The discovery meta tags of a page (malformed ones are skipped)."""
    p = _MetaParser()
    try:
        p.feed(html[:MAX_PAGE])
        p.close()
    except Exception:  # noqa: BLE001 - html.parser on hostile input: keep what was found
        pass
    return p.tags


def pubkey_urls(tags: list[MetaTag], name: str) -> list[tuple[str, str]]:
    """(prefix, key URL) of the pubkeys tags whose prefix covers ``name``."""
    return [(t.prefix, t.target) for t in tags
            if t.kind == "ac-discovery-pubkeys" and covers(t.prefix, name)]


def image_templates(tags: list[MetaTag], name: str) -> list[str]:
    """The image URL templates of the tags whose prefix covers ``name``, longest first."""
    found = [t for t in tags if t.kind == "ac-discovery" and covers(t.prefix, name)]
    return [t.target for t in sorted(found, key=lambda t: -len(t.prefix))]


def expand(template: str, labels: dict[str, str]) -> str | None:
    """Fill {name}, {version}, {os}, {arch}, {ext}; None when a placeholder has no value
    or is unknown (the template then does not apply)."""
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "{":
            j = template.find("}", i)
            if j < 0:
                return None
            key = template[i + 1:j]
            if key not in labels:
                return None
            out.append(labels[key])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def discovery_url(name: str, scheme: str = "https") -> str:
    return f"{scheme}://{name}?ac-discovery=1"


def parents(name: str) -> list[str]:
    """``a.b/c/d`` -> [``a.b/c/d``, ``a.b/c``, ``a.b``]: where discovery looks, in order."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def find(name: str, kind: str, transport: http.Transport,
         notify: Callable[[str], None]) -> list[MetaTag]:
    """The tags of ``kind`` covering ``name`` from the first page (of ``name``, then of its
    parents) that has any; a page that cannot be read counts as one without tags.

    :raise NotFound: no page has such a tag (the message lists the pages tried)
    """
    tried = []
    for candidate in parents(name):
        url = discovery_url(candidate)
        tried.append(url)
        notify(f"meta discovery: {url}")
        try:
            _, body = http.download(url, None, transport, max_bytes=MAX_PAGE)
        except PcoccError as err:
            log.info("meta discovery: %s", err)
            continue
        tags = [t for t in parse_page(body.decode("utf-8", "replace"))
                if t.kind == kind and covers(t.prefix, name)]
        if tags:
            return tags
    raise NotFound(f"meta discovery error: found no {kind} meta tag for {name}",
                   hint="tried " + ", ".join(tried))
