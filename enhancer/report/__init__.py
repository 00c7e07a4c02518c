"""Looking at an enhanced dataset: figures drawn from the shards.

``grid.py`` draws the PNG of ``enhancer show``; ``site.py`` writes the HTML report of ``enhancer report`` from
``collect`` (per-sample columns), ``select`` (the gallery's samples), ``thumbs`` (JPEG strips and cards), ``svg``
and ``sections`` (summary charts), ``external`` (cycle rounds, audit verdicts) and ``page`` (index.html, data
scripts, the hand-written ``static/report.js`` and ``report.css``).
"""
