"""The small HTML pages the federation front end sends.

Owns: Apache's stock ``302 Found``/``301 Moved Permanently``/error pages (what
mod_lcgdm_dav's Apache sends, ``text/html; charset=iso-8859-1``) and the HTML
directory listing for a GET on a collection. Pure functions returning bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from http import HTTPStatus

from davfed_testfed.namespace import Entry

APACHE_HTML = "text/html; charset=iso-8859-1"


def _apache_page(status: int, body: str) -> bytes:
    phrase = HTTPStatus(status).phrase
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n'
        f"<html><head>\n<title>{status} {phrase}</title>\n</head><body>\n"
        f"<h1>{phrase}</h1>\n{body}\n</body></html>\n"
    ).encode("iso-8859-1", errors="xmlcharrefreplace")


def redirect_page(status: int, location: str) -> bytes:
    """Apache's body for a 301/302 to ``location``."""
    return _apache_page(
        status, f'<p>The document has moved <a href="{escape(location)}">here</a>.</p>'
    )


def error_page(status: int, message: str) -> bytes:
    """Apache-style error page (do not parse it, as the protocol notes say)."""
    return _apache_page(status, f"<p>{escape(message)}</p>")


def listing_page(title_path: str, rows: Sequence[tuple[str, Entry]]) -> bytes:
    """HTML listing of a directory: ``rows`` are (relative href, child entry)."""
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Index of {escape(title_path)}</title></head><body>",
        f"<h1>Index of {escape(title_path)}</h1>",
        "<table><tr><th>Name</th><th>Size</th></tr>",
        '<tr><td><a href="../">../</a></td><td>-</td></tr>',
    ]
    for href, entry in rows:
        label = entry.name + ("/" if entry.is_dir else "")
        size = "-" if entry.is_dir else str(entry.size)
        lines.append(
            f'<tr><td><a href="{escape(href)}">{escape(label)}</a></td><td>{size}</td></tr>'
        )
    lines.append("</table></body></html>")
    return ("\n".join(lines) + "\n").encode()
