"""The report's heatmap section: each slide's tumour probability with its annotation drawn as a contour over it,
a link to the slide's GeoJSON, and how to open that GeoJSON in QuPath.

Pure functions of a `SlideView`; the picture itself is drawn by `report_figures.slide_figure`.
"""

from __future__ import annotations

from layer3_inference.pipeline.collect import SlideView
from layer3_inference.pipeline.report_html import esc, fmt, img

QUPATH = ('<p id="qupath">To check a slide in QuPath: open the slide (<i>File &gt; Open</i>), then drag its '
          "<code>.geojson</code> (linked under each heatmap) onto the viewer, or use <i>File &gt; Import objects "
          "from file</i>. Tumour regions come in as annotations and, unless <code>output.geojson_tiles</code> is "
          "off, each patch as a detection with its <code>tumor_probability</code> measurement (<i>Measure &gt; "
          "Show detection measurements</i>). The links work while this report stays in the experiment's "
          "<code>report/</code> folder beside <code>heatmaps/</code>.</p>")


def caption(v: SlideView) -> str:
    """What the picture shows, and never a contour it does not have."""
    if v.figure_png is None:
        return "tumour probability (tissue and annotation unavailable: Layer 1's store or overlay.png is missing)"
    if v.annotated is False:
        return "tumour probability over tissue (grey); no annotation for this slide: nothing to compare with"
    if v.contour:
        return "tumour probability over tissue (grey); red contour: the annotated tumour"
    return "tumour probability over tissue (grey); the annotation marks no tumour on this slide"


def slide_block(v: SlideView) -> str:
    warnings = "".join(f'<li data-code="{esc(w.get("code"))}">{esc(w.get("message"))}</li>'
                       for w in v.warnings if isinstance(w, dict))
    facts = (f'<p id="slide-facts-{esc(v.slide)}">colour shift from training {esc(fmt(v.colour_shift))}; share of '
             f"tissue called tumour {esc(fmt(v.tumour_share))}</p>"
             if v.colour_shift is not None or v.tumour_share is not None else "")
    box = f'<ul id="heatmap-warnings-{esc(v.slide)}" class="warnings">{warnings}</ul>' if warnings else ""
    link = (f'<p><a class="geojson" id="geojson-{esc(v.slide)}" href="{esc(v.geojson)}">{esc(v.slide)}.geojson'
            "</a> (tumour regions and patches, for QuPath)</p>" if v.geojson else "")
    picture = img(v.figure_png if v.figure_png is not None else v.heatmap_png, f"heatmap of {v.slide}", 640)
    return (f'<section class="slide" id="slide-{esc(v.slide)}"><h3>{esc(v.slide)}</h3>{box}{facts}<figure>'
            f'{picture}<figcaption id="caption-{esc(v.slide)}">{esc(caption(v))}</figcaption></figure>{link}'
            "</section>")
