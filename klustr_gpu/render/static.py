"""Static outputs: ``map.png`` (datashader + a legend) and ``map.html`` (a page without a server).

``map.html`` holds, for up to ``RenderConfig.html_max_points`` points, every point as data drawn
on a canvas by a small inline script (zoom, pan, hover shows the file name, a click plays the
file, referenced by its path relative to the page); above that it shows the raster. It loads
nothing from the network. Every name is escaped: data travels as JSON with ``<``, ``>`` and
``&`` escaped, and the script writes names with ``textContent`` only.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from ..store import Project, atomic_write_bytes, atomic_write_text
from .data import UNLABELLED, MapData, audio_urls_relative
from .security import audio_type
from .spread import dynspread

log = logging.getLogger(__name__)

BACKGROUND = "white"


def spread_px(n: int, width: int, height: int) -> int:
    """Dot radius in pixels: big dots for small maps, single pixels for millions of points."""
    if n <= 0:
        return 1
    return int(min(6, max(1, round(math.sqrt(width * height / n) / 6))))


def aggregate(points, *, by: str, width: int, height: int, x_range: tuple[float, float],
              y_range: tuple[float, float]):
    """Datashader's ``count_cat(by)`` aggregate of ``points`` (pandas or Dask: ``x``, ``y``,
    a categorical ``by``): an xarray ``(y, x, category)`` of counts, coordinates in data units."""
    import datashader as ds

    cvs = ds.Canvas(plot_width=int(width), plot_height=int(height), x_range=x_range, y_range=y_range)
    return cvs.points(points, "x", "y", ds.count_cat(by))


def shade_aggregate(agg, color_key: dict[str, str], *, px: int):
    """:func:`shade_categorical` then datashader's ``dynspread`` up to ``px`` pixels (as
    :func:`.spread.dynspread`, which compiles once per machine, not once per process)."""
    img = shade_categorical(agg, color_key)
    if px > 0:
        img = img.copy(data=dynspread(img.data, threshold=0.9, max_px=px))
    return img


def shade(points, *, by: str, color_key: dict[str, str], width: int, height: int,
          x_range: tuple[float, float], y_range: tuple[float, float], max_px: int | None = None):
    """Datashader: Canvas.points → count_cat(by) → colour mix + eq_hist alpha → dynspread.

    ``points`` is a pandas or Dask data frame with ``x``, ``y`` and a categorical ``by``
    column. Returns a ``datashader.transfer_functions.Image``.
    """
    agg = aggregate(points, by=by, width=width, height=height, x_range=x_range, y_range=y_range)
    return shade_aggregate(agg, color_key, px=spread_px(len(points), width, height) if max_px is None else max_px)


def label_anchors(agg, *, skip=(UNLABELLED,), cells: int = 24) -> dict[str, tuple[float, float]]:
    """Where to write each category's name on the map: the centre of its densest region.

    The ``count_cat`` aggregate is summed into about ``cells`` × ``cells`` blocks; in the 3×3
    blocks holding most of a category's points, the count-weighted mean of its pixel centres
    (data units) is the anchor: on the points rather than at their overall mean, so a category
    split over the map is named where most of it is. Categories without points, and ``skip``,
    get none."""
    ydim, xdim, cdim = agg.dims
    counts = np.asarray(agg.data, dtype=np.float64)
    h, w, _ = counts.shape
    xs, ys = np.asarray(agg.coords[xdim].values, float), np.asarray(agg.coords[ydim].values, float)
    block = max(1, int(math.ceil(max(h, w) / cells)))
    out = {}
    for k, cat in enumerate(str(c) for c in agg.coords[cdim].values):
        if cat in skip:
            continue
        grid = counts[:, :, k]
        if not grid.any():
            continue
        hb, wb = -(-h // block), -(-w // block)
        padded = np.zeros((hb * block, wb * block))
        padded[:h, :w] = grid
        sums = np.pad(padded.reshape(hb, block, wb, block).sum(axis=(1, 3)), 1)
        near = sum(sums[1 + dy:hb + 1 + dy, 1 + dx:wb + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        by_, bx = np.unravel_index(int(np.argmax(near)), near.shape)       # first densest 3x3 blocks
        y0, x0 = max(0, (by_ - 1) * block), max(0, (bx - 1) * block)
        region = grid[y0:(by_ + 2) * block, x0:(bx + 2) * block]
        yy, xx = np.nonzero(region)
        wt = region[yy, xx]
        out[cat] = (float(np.average(xs[x0 + xx], weights=wt)), float(np.average(ys[y0 + yy], weights=wt)))
    return out


def _mix_kernel():
    """The numba kernel of :func:`shade_categorical`, compiled on first use (cached on disk)."""
    global _MIX
    if _MIX is None:
        import numba

        @numba.njit(nogil=True, cache=True)
        def mix(counts, colours, out, totals):
            n, n_cat = counts.shape
            for i in range(n):
                t = 0
                r = g = b = 0.0
                for c in range(n_cat):
                    k = counts[i, c]
                    if k:
                        t += k
                        r += k * colours[c, 0]
                        g += k * colours[c, 1]
                        b += k * colours[c, 2]
                totals[i] = t
                if t:
                    out[i, 0] = np.uint8(r / t + 0.5)
                    out[i, 1] = np.uint8(g / t + 0.5)
                    out[i, 2] = np.uint8(b / t + 0.5)

        _MIX = mix
    return _MIX


_MIX = None


def equalised_alpha(out: np.ndarray, totals: np.ndarray, min_alpha: int = 170) -> None:
    """Set the alpha of ``out [n, 4]`` (uint8 RGBA pixels) from the histogram-equalised
    ``totals [n]`` (points per pixel): the lowest count gets ``min_alpha``, the highest 255,
    empty pixels stay 0 -- what ``tf.shade(how="eq_hist")`` does to alpha. In place."""
    nz = np.flatnonzero(totals)
    if len(nz):
        t = totals[nz]
        if t.max() <= 4_000_000:                 # CDF of the counts by bincount (no sort)
            cdf = np.cumsum(np.bincount(t)) / len(t)
            key, lo = t, cdf[t.min()]
        else:
            _, key, cnt = np.unique(t, return_inverse=True, return_counts=True)
            cdf = np.cumsum(cnt) / len(t)
            lo = cdf[0]
        norm = (cdf - lo) / (1.0 - lo) if lo < 1.0 else np.ones_like(cdf)
        out[nz, 3] = np.rint(min_alpha + (255 - min_alpha) * norm[key]).astype(np.uint8)


def shade_categorical(agg, color_key: dict[str, str], *, min_alpha: int = 170):
    """Shade a ``count_cat`` aggregate ``(y, x, category)``: each pixel gets the count-weighted
    mean colour of its categories and an alpha from the histogram-equalised total count
    (the lowest count → ``min_alpha``, the highest → 255), as ``tf.shade(how="eq_hist")`` does,
    in one compiled pass (several times faster than ``tf.shade`` with many categories)."""
    import datashader.transfer_functions as tf
    from datashader.colors import rgb

    ydim, xdim, cdim = agg.dims
    cats = [str(c) for c in agg.coords[cdim].values]
    colours = np.array([rgb(color_key[c]) for c in cats], dtype=np.float64).reshape(len(cats), 3)
    h, w, n_cat = agg.shape
    flat = np.ascontiguousarray(agg.data).reshape(h * w, n_cat)
    out = np.zeros((h * w, 4), dtype=np.uint8)
    totals = np.zeros(h * w, dtype=np.int64)
    _mix_kernel()(flat, colours, out, totals)
    equalised_alpha(out, totals, min_alpha)
    packed = out.view(np.uint32).reshape(h, w)
    return tf.Image(packed, coords={ydim: agg.coords[ydim], xdim: agg.coords[xdim]}, dims=[ydim, xdim])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _legend_width(data: MapData, counts: dict[str, int], font) -> int:
    widths = [font.getbbox(f"{k} ({counts.get(k, 0):,})")[2] for k in data.color_key]
    return int(min(320, max(150, (max(widths) if widths else 0) + 48)))


def render_png(data: MapData, target: Path, *, width: int, height: int) -> Path:
    """Write the datashaded map plus a legend strip on the right to ``target`` (atomically).
    ``data.points`` is a pandas or (from :func:`.data.load_map_dask`) a Dask DataFrame."""
    from PIL import Image, ImageDraw

    font, small = _font(14), _font(12)
    counts = data.counts()
    legend_w = _legend_width(data, counts, font) if data.color_key else 0
    map_w = max(64, width - legend_w)
    x_range, y_range = data.bounds(aspect=map_w / height)
    # data.points may be a Dask DataFrame (render --cluster): datashader aggregates it partition
    # by partition on the cluster; the integer counts, hence the picture, equal the pandas ones
    agg = aggregate(data.points, by=data.by, width=map_w, height=height, x_range=x_range, y_range=y_range)
    img = shade_aggregate(agg, data.color_key, px=spread_px(data.n, map_w, height))
    canvas = Image.new("RGB", (map_w + legend_w, height), BACKGROUND)
    layer = img.to_pil()
    canvas.paste(layer, (0, 0), layer)
    draw = ImageDraw.Draw(canvas)
    if names_on_map(data):
        anchors = label_anchors(agg)
        px = {k: ((ax - x_range[0]) / (x_range[1] - x_range[0]) * map_w,
                  (y_range[1] - ay) / (y_range[1] - y_range[0]) * height) for k, (ax, ay) in anchors.items()}
        draw_names(draw, px, counts, _font(15), box=(0, 0, map_w, height - 24))
    draw.line([(map_w, 0), (map_w, height)], fill="#dddddd", width=1)
    x0, y = map_w + 14, 14
    draw.text((x0, y), data.by, fill="#333333", font=font)
    y += 26
    for name, colour in data.color_key.items():
        if y > height - 40:
            draw.text((x0, y), f"… {len(data.color_key)} in all", fill="#666666", font=small)
            break
        draw.rectangle([x0, y + 2, x0 + 12, y + 14], fill=colour)
        draw.text((x0 + 20, y), f"{name} ({counts.get(name, 0):,})", fill="#222222", font=font)
        y += 22
    draw.text((8, height - 20), f"{data.n:,} points · {data.embedding}", fill="#777777", font=small)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False, compress_level=1)
    atomic_write_bytes(target, buf.getvalue())
    return target


def names_on_map(data: MapData) -> bool:
    """Category names are written on the map when it is coloured by (named) clusters."""
    return data.by == "cluster"


def draw_names(draw, anchors: dict[str, tuple[float, float]], counts: dict[str, int], font, *,
               box: tuple[int, int, int, int]) -> list[str]:
    """Write each name centred on its anchor (pixels), dark on a white halo, biggest category
    first; a name that would overlap one already written, or leave ``box``, is moved inside
    or left out. Returns the names written."""
    placed: list[tuple[float, float, float, float]] = []
    written = []
    for name in sorted(anchors, key=lambda k: (-counts.get(k, 0), k)):
        x, y = anchors[name]
        l, t, r, b = draw.textbbox((0, 0), name, font=font, stroke_width=3)
        w, h = r - l, b - t
        x0 = min(max(box[0] + 2, x - w / 2), box[2] - w - 2)
        y0 = min(max(box[1] + 2, y - h / 2), box[3] - h - 2)
        rect = (x0, y0, x0 + w, y0 + h)
        if any(rect[0] < q[2] and q[0] < rect[2] and rect[1] < q[3] and q[1] < rect[3] for q in placed):
            continue
        draw.text((x0 - l, y0 - t), name, fill="#111111", font=font, stroke_width=3, stroke_fill="white")
        placed.append(rect)
        written.append(name)
    return written


# -- map.html ---------------------------------------------------------------------------------

def _json_for_script(obj) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` or line separators."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _round(a: np.ndarray, digits: int = 5) -> list[float]:
    a = np.asarray(a, dtype=np.float64)
    span = float(np.ptp(a)) if len(a) else 1.0
    decimals = max(0, digits - int(math.floor(math.log10(span or 1.0))) - 1)
    return np.round(a, decimals).tolist()


def file_formats(rels: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Per file its format (the extension in capitals, ``""`` without one), each format's MIME
    type for the page's ``canPlayType`` check, and the formats ``klustr serve`` converts."""
    from .security import TRANSCODE

    fmts = [Path(r).suffix.lower() for r in rels]
    types = {e[1:].upper(): audio_type("file" + e) for e in sorted(set(fmts)) if e}
    return [e[1:].upper() for e in fmts], types, sorted(e[1:].upper() for e in TRANSCODE)


def html_anchors(data: MapData, x_range, y_range, size: int = 400) -> dict[str, list[float]]:
    """:func:`label_anchors` of the whole map in data units (``{}`` unless :func:`names_on_map`)."""
    if not names_on_map(data):
        return {}
    agg = aggregate(data.points, by=data.by, width=size, height=size, x_range=x_range, y_range=y_range)
    return {k: _round(np.array(v), 6) for k, v in label_anchors(agg).items()}


def html_payload(data: MapData, project: Project) -> dict:
    """Everything the standalone page draws, as plain lists (files deduplicated)."""
    pts = data.points
    cats = list(data.color_key)
    counts = pts[data.by].value_counts().to_dict()
    codes = pts[data.by].cat.codes.to_numpy()
    _, first_idx, file_codes = np.unique(pts["file_id"].to_numpy(), return_index=True, return_inverse=True)
    rows = pts.iloc[first_idx]
    rels = rows["path"].astype(str).tolist()
    x_range, y_range = data.bounds()
    fmts, types, converted = file_formats(rels)
    return {
        "by": data.by,
        "embedding": data.embedding,
        "n": int(len(pts)),
        "cats": [[c, data.color_key[c], int(counts.get(c, 0))] for c in cats],
        "files": {
            "name": rows["name"].astype(str).tolist(),
            "label": rows["label"].astype(str).tolist(),
            "dur": _round(rows["duration"].to_numpy(), 4),
            "url": audio_urls_relative(project, rels),
            "fmt": fmts,
        },
        "types": types,
        "converted": converted,
        "anchors": html_anchors(data, x_range, y_range),
        "x": _round(pts["x"].to_numpy()),
        "y": _round(pts["y"].to_numpy()),
        "c": codes.astype(int).tolist(),
        "f": file_codes.astype(int).tolist(),
        "t": _round(pts["start"].to_numpy(), 4) if data.frames else None,
        "bounds": [*x_range, *y_range],
    }


def render_html(data: MapData, project: Project, target: Path, *, png: Path | None, max_points: int) -> Path:
    """Write ``map.html``: interactive points up to ``max_points``, else the raster image."""
    title = html.escape(f"klustr_gpu map · {data.embedding} · {data.n:,} points")
    legend = "".join(
        f'<li data-cat="{i}"><span class="sw" style="background:{html.escape(c)}"></span>{html.escape(k)}</li>'
        for i, (k, c) in enumerate(data.color_key.items()))
    if data.n <= max_points:
        body = _INTERACTIVE.replace("@@DATA@@", _json_for_script(html_payload(data, project)))
        script = _SCRIPT
    else:
        b64 = base64.b64encode(png.read_bytes()).decode("ascii") if png and png.exists() else ""
        note = html.escape(f"{data.n:,} points: more than {max_points:,}, so this page shows the picture; "
                           f"`klustr serve` gives the zoomable map with playback.")
        body = f'<p class="note">{note}</p><img alt="map" src="data:image/png;base64,{b64}">'
        script = ""
    values = {"TITLE": title, "LEGEND": legend, "BY": html.escape(data.by), "SCRIPT": script, "BODY": body}
    page = re.sub(r"@@([A-Z]+)@@", lambda m: values[m.group(1)], _PAGE)   # one pass: names never re-scanned
    atomic_write_text(target, page)
    return target


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; media-src 'self' file: http: https:">
<title>@@TITLE@@</title>
<style>
body{margin:0;font:14px system-ui,sans-serif;display:flex;height:100vh;color:#222}
#main{flex:1;position:relative;overflow:hidden}
#side{width:260px;padding:10px;border-left:1px solid #ddd;overflow:auto}
#map{width:100%;height:100%;display:block;cursor:crosshair}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #999;padding:2px 6px;display:none;white-space:nowrap}
ul{list-style:none;padding:0}li{cursor:pointer;margin:3px 0}li.off{opacity:.3}
.sw{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}
img{max-width:100%}.note{padding:10px}audio{width:100%}.warn{color:#8a4b00}
</style></head><body>
<div id="main">@@BODY@@</div>
<div id="side"><h3>@@TITLE@@</h3><p>coloured by @@BY@@ (click to hide or show)</p><ul id="legend">@@LEGEND@@</ul>
<p id="cantplay" class="warn" hidden></p><p id="now"></p><audio id="player" controls preload="none"></audio>
<p><small>wheel: zoom · drag: pan · click: play · r: reset</small></p></div>
@@SCRIPT@@
</body></html>
"""

_INTERACTIVE = """<canvas id="map"></canvas><div id="tip"></div>
<script type="application/json" id="data">@@DATA@@</script>
"""

_SCRIPT = """<script>
(function(){
const D=JSON.parse(document.getElementById('data').textContent);
const cv=document.getElementById('map'),ctx=cv.getContext('2d'),tip=document.getElementById('tip');
const player=document.getElementById('player'),now=document.getElementById('now');
const n=D.n,X=D.x,Y=D.y,C=D.c,F=D.f,cols=D.cats.map(c=>c[1]),hidden=new Set();
const FMT=D.files.fmt,probe=document.createElement('audio'),canFmt={};
function can(f){const e=FMT[f];if(!(e in canFmt))canFmt[e]=!!(D.types[e]&&probe.canPlayType(D.types[e]));return canFmt[e];}
function why(f){const e=FMT[f]||'no extension';return 'cannot play here: '+e+(D.converted.includes(e)?'; `klustr serve` converts it':'');}
(function(){const bad={};let k=0;for(let f=0;f<FMT.length;f++)if(!can(f)){bad[FMT[f]||'no extension']=1;k++;}
  if(k){const el=document.getElementById('cantplay'),fs=Object.keys(bad).sort();
    el.textContent=k+' of '+FMT.length+' files cannot play in this browser ('+fs.join(', ')+'; drawn hollow)'+
      (fs.some(e=>D.converted.includes(e))?'; `klustr serve` converts '+fs.filter(e=>D.converted.includes(e)).join(', '):'');
    el.hidden=false;}})();
let W=0,H=0,s=1,cx=0,cy=0,drag=null,moved=false;
function reset(){const b=D.bounds;cx=(b[0]+b[1])/2;cy=(b[2]+b[3])/2;
  s=Math.min(W/((b[1]-b[0])||1),H/((b[3]-b[2])||1));draw();}
function size(){const r=window.devicePixelRatio||1;W=cv.clientWidth;H=cv.clientHeight;
  cv.width=W*r;cv.height=H*r;ctx.setTransform(r,0,0,r,0,0);}
function sx(x){return (x-cx)*s+W/2}function sy(y){return H/2-(y-cy)*s}
function draw(){ctx.clearRect(0,0,W,H);const r=n>20000?1.5:n>2000?2.5:4;ctx.lineWidth=1;
  for(let i=0;i<n;i++){if(hidden.has(C[i]))continue;const px=sx(X[i]),py=sy(Y[i]);
    if(px<-r||py<-r||px>W+r||py>H+r)continue;
    if(can(F[i])){ctx.fillStyle=cols[C[i]];ctx.fillRect(px-r,py-r,2*r,2*r);}
    else{ctx.strokeStyle=cols[C[i]];ctx.strokeRect(px-r+0.5,py-r+0.5,2*r-1,2*r-1);}}
  names();}
function names(){let k=0;ctx.font='600 14px system-ui,sans-serif';ctx.textAlign='center';ctx.textBaseline='middle';
  ctx.lineJoin='round';ctx.lineWidth=4;ctx.strokeStyle='#fff';ctx.fillStyle='#111';
  D.cats.forEach((c,j)=>{const a=D.anchors[c[0]];if(!a||hidden.has(j))return;const px=sx(a[0]),py=sy(a[1]);
    if(px<0||py<0||px>W||py>H)return;ctx.strokeText(c[0],px,py);ctx.fillText(c[0],px,py);k++;});
  cv.dataset.names=k;}
function nearest(mx,my){let best=-1,bd=100;for(let i=0;i<n;i++){if(hidden.has(C[i]))continue;
  const dx=sx(X[i])-mx,dy=sy(Y[i])-my,d=dx*dx+dy*dy;if(d<bd){bd=d;best=i;}}return best;}
function info(i){const f=F[i];return D.files.name[f]+' · '+D.files.label[f]+' · '+D.files.dur[f]+' s'+(can(f)?'':' · '+why(f));}
cv.addEventListener('wheel',e=>{e.preventDefault();const k=Math.exp(-e.deltaY*0.002);
  const r=cv.getBoundingClientRect(),mx=e.clientX-r.left,my=e.clientY-r.top;
  const x=(mx-W/2)/s+cx,y=(H/2-my)/s+cy;s*=k;cx=x-(mx-W/2)/s;cy=y-(H/2-my)/s;draw();},{passive:false});
cv.addEventListener('mousedown',e=>{drag=[e.clientX,e.clientY,cx,cy];moved=false;});
window.addEventListener('mouseup',e=>{if(drag&&!moved){const r=cv.getBoundingClientRect();
  const i=nearest(e.clientX-r.left,e.clientY-r.top);if(i>=0){const f=F[i],t=D.t?D.t[i]:0;now.textContent=info(i);
  if(!can(f)){player.pause();player.removeAttribute('src');player.load();now.className='warn';}
  else{now.className='';player.src=D.files.url[f]+(t>0?'#t='+t:'');
    player.play().catch(()=>{});}}}drag=null;});
player.addEventListener('error',()=>{if(!player.getAttribute('src'))return;now.className='warn';
  now.textContent+=' · cannot play here: the browser could not decode or find this file';});
cv.addEventListener('mousemove',e=>{const r=cv.getBoundingClientRect(),mx=e.clientX-r.left,my=e.clientY-r.top;
  if(drag){const dx=e.clientX-drag[0],dy=e.clientY-drag[1];if(Math.abs(dx)+Math.abs(dy)>3)moved=true;
    cx=drag[2]-dx/s;cy=drag[3]+dy/s;draw();tip.style.display='none';return;}
  const i=nearest(mx,my);if(i<0){tip.style.display='none';return;}
  tip.textContent=info(i);tip.style.left=(mx+12)+'px';tip.style.top=(my+12)+'px';tip.style.display='block';});
cv.addEventListener('mouseleave',()=>{tip.style.display='none';});
document.querySelectorAll('#legend li').forEach(li=>li.addEventListener('click',()=>{
  const c=+li.dataset.cat;if(hidden.has(c))hidden.delete(c);else hidden.add(c);li.classList.toggle('off');draw();}));
window.addEventListener('keydown',e=>{if(e.key==='r')reset();});
function init(){size();reset();new ResizeObserver(()=>{size();draw();}).observe(cv);}
if(document.readyState==='loading')document.addEventListener('DOMContentLoaded',init);else init();
})();
</script>
"""
