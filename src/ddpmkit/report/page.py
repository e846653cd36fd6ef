"""HTML building blocks of the report: escaped text, tables, embedded images, the page template.

The page is self-contained: images are `data:` URIs, style and script are inline, and a
Content-Security-Policy forbids loading anything else, so it opens the same from a laptop's
downloads folder as on the cluster it was written on. A small inline script records, once the
page has loaded, how many images it has and how many failed to decode (`data-images`,
`data-images-broken` on <body>) and any script error (`data-js-errors`): a headless browser's
DOM dump shows them, which is how the tests check the page really renders.
"""

from __future__ import annotations

import base64
import html
from string import Template
from typing import Any, Iterable, Optional, Sequence

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1b1f24; background: #f6f7f9; }
header { background: #1b2a41; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: .8; }
nav { padding: 8px 28px; background: #e9edf2; font-size: 13px; }
nav a { margin-right: 14px; color: #1b2a41; }
main { padding: 8px 28px 40px; max-width: 1200px; }
section { background: #fff; border: 1px solid #dde2e8; border-radius: 6px; padding: 12px 18px; margin: 16px 0; }
h2 { font-size: 17px; margin: 4px 0 10px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; border-bottom: 1px solid #eef0f3; }
th { color: #5a6472; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #5a6472; }
.problems { color: #8a4b00; }
.plots { display: flex; flex-wrap: wrap; gap: 8px 16px; }
.plots img { max-width: 100%; height: auto; }
.timeline { display: flex; flex-wrap: wrap; gap: 12px; }
.timeline figure { margin: 0; width: 200px; }
.pixels { width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #dde2e8; }
figcaption { font-size: 12px; color: #5a6472; text-align: center; }
.big { max-width: 512px; }
.settings { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
"""

SCRIPT = """
(function () {
  var errors = 0;
  window.addEventListener('error', function () { errors += 1; }, true);
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-images-broken', String(broken.length));
    document.body.setAttribute('data-js-errors', String(errors));
    document.body.setAttribute('data-loaded', 'yes');
  });
})();
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
<script>$script</script>
</head>
<body>
<header><h1>$title</h1><p>$subtitle</p></header>
<nav>$nav</nav>
<main>
$sections
</main>
</body>
</html>
""")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str, alt: str, cls: str = "", size: Optional[tuple[int, int]] = None) -> str:
    """An <img> holding `data` inline; `size` (w, h) in pixels reserves its box before decoding."""
    attrs = f' class="{esc(cls)}"' if cls else ""
    if size is not None:
        attrs += f' width="{size[0]}" height="{size[1]}"'
    return f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}"{attrs}>'


def table(rows: Iterable[Sequence[Any]], header: Optional[Sequence[str]] = None, numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped, columns listed in `numeric` are right-aligned."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; `sections` are (id, title, inner HTML) in display order.

    Non-ASCII characters become character references, so the file is plain ASCII whatever the
    locale it is written under, and reads right whatever encoding a browser assumes.
    """
    nav = "".join(f'<a href="#{esc(sid)}">{esc(t)}</a>' for sid, t, _ in sections)
    text = PAGE.substitute(
        title=esc(title),
        subtitle=esc(subtitle),
        css=CSS,
        script=SCRIPT,
        nav=nav,
        sections="\n".join(section(*s) for s in sections),
    )
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")
