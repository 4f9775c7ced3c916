"""The report's multiplanar viewer: NiiVue (WebGL) per case, vendored, offline.

For every case :func:`case_viewer` writes a block with one NiiVue canvas per method, side by
side: the image in three planes and a 3D render (a 2D image: its one plane), the method's map
as an overlay, the lesion annotation as a second overlay, and a crosshair that moves in all of
them together (NiiVue's ``broadcastTo``). Shared controls set the map's colour map, opacity and
threshold, the lesion's opacity, the image's window and level, and the view; a button per lesion
(its centre voxel), per method (its map's maximum) and per finding of a method (its peak, the
strongest three) moves the crosshair there.

The volumes travel inside ``report.html`` as gzip-compressed NIfTI in base64 (the image as
16-bit integers with a scale and offset, maps as 8-bit with scale 1/255, the lesion as 8-bit
labels), each with the source's affine, so the page needs no server and no network. NiiVue's
built JavaScript (:data:`NIIVUE_VERSION`, BSD-2-Clause, ``vendor/niivue/README.md`` says how
to update it) is copied beside ``report.html`` by :func:`write_viewer_assets` and loaded by a
classic ``<script src>``, which works from ``file://``. A case's viewer starts when its case is
opened (``#case-<id>``) or its "open" button is pressed, so a long report does not create more
WebGL contexts than a browser allows. The address fragment can also hold ``vox=i,j,k`` (move
the crosshair to that voxel of the source grid, MONAI order), ``view=multiplanar|axial|coronal|
sagittal|render``, ``opacity=<0..1>`` and ``crosshair=0`` (hidden). Each canvas reports its crosshair
in ``data-vox`` (source grid, MONAI order), its tiles and its place on the page (for the tests).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write

__all__ = ["NIIVUE_FILE", "NIIVUE_JS", "NIIVUE_VERSION", "case_viewer", "viewer_script", "write_viewer_assets"]

NIIVUE_VERSION = "0.69.0"
#: the vendored build (``dist/niivue.umd.js`` of ``@niivue/niivue``)
NIIVUE_JS = Path(__file__).parent / "vendor" / "niivue" / "niivue.umd.js"
#: its name beside ``report.html``
NIIVUE_FILE = f"niivue-{NIIVUE_VERSION}.umd.js"
MAP_THRESHOLD = 0.2
MAP_OPACITY = 0.7
LESION_OPACITY = 0.35


def write_viewer_assets(out_dir: str | os.PathLike) -> list[Path]:
    """Copy NiiVue's JavaScript and its licence beside ``report.html``; the paths written."""
    out = Path(out_dir)
    files = {NIIVUE_FILE: NIIVUE_JS, f"niivue-{NIIVUE_VERSION}-LICENSE.txt": NIIVUE_JS.parent / "LICENSE"}
    for name, source in files.items():
        atomic_write(out / name, source.read_bytes())
    return [out / name for name in files]


def _nifti_base64(array: np.ndarray, affine: np.ndarray, kind: str) -> str:
    """``array`` (MONAI order) as a gzip-compressed NIfTI-1 in base64: ``kind`` image (int16 scaled), map (uint8
    scaled by 1/255) or label (uint8)."""
    import nibabel as nib

    data = np.asarray(array, dtype=np.float64)
    slope, inter = 1.0, 0.0
    if kind == "map":
        stored = np.round(np.clip(data, 0, 1) * 255).astype(np.uint8)
        slope = 1 / 255
    elif kind == "label":
        stored = (data > 0).astype(np.uint8)
    else:
        lo, hi = float(data.min()), float(data.max())
        slope = (hi - lo) / 65535 if hi > lo else 1.0
        stored = (np.round((data - lo) / slope) - 32768).astype(np.int16)
        inter = lo + 32768 * slope
    image = nib.Nifti1Image(stored, affine)
    image.header.set_slope_inter(slope, inter)
    return base64.b64encode(gzip.compress(image.to_bytes(), compresslevel=9, mtime=0)).decode()


def _to_ras(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The ``(4, 4)`` matrix from a voxel of the source grid (MONAI order) to the same voxel of the volume turned to
    the nearest RAS orientation (nibabel's ``as_closest_canonical``), the voxel space of NiiVue's ``vox2frac``."""
    import nibabel as nib

    shape3 = tuple(shape) + (1,) * (3 - len(shape))
    ornt = nib.orientations.io_orientation(affine)
    return np.linalg.inv(nib.orientations.inv_ornt_aff(ornt, shape3))


#: the viewer has a button for at most this many of each method's findings (the strongest)
FINDING_BUTTONS = 3


def _jump_points(lesion: np.ndarray, maps: dict, methods: Sequence[str], findings: dict | None = None) -> list[dict]:
    """A button per lesion (the voxel nearest its centre of mass), per method (its map's maximum) and per finding
    of a method (its peak; the first :data:`FINDING_BUTTONS`)."""
    from scipy import ndimage

    points = []
    labels, n = ndimage.label(lesion > 0)
    for k, centre in enumerate(ndimage.center_of_mass(lesion > 0, labels, range(1, n + 1)) if n else [], start=1):
        inside = np.argwhere(labels == k)
        nearest = inside[np.argmin(((inside - np.asarray(centre)) ** 2).sum(axis=1))]
        points.append({"label": f"lesion {k}", "vox": [int(v) for v in nearest]})
    for method in methods:
        peak = np.unravel_index(int(np.argmax(maps[method])), maps[method].shape)
        points.append({"label": f"{method} maximum", "vox": [int(v) for v in peak]})
        for k, finding in enumerate((findings or {}).get(method, [])[:FINDING_BUTTONS], start=1):
            points.append({"label": f"{method} finding {k}", "vox": [int(v) for v in finding["peak"]]})
    return points


def case_viewer(case_fig: dict, methods: Sequence[str], anchor: str) -> str:
    """The NiiVue block of one case (``case_fig``: ``image``, ``lesion_array``, ``maps`` on the source grid in
    MONAI order, ``affine``, and optionally ``findings`` per method); empty without methods."""
    shown = [m for m in methods if m in case_fig["maps"]]
    if not shown:
        return ""
    image = np.asarray(case_fig["image"])
    volume = image.ndim == 3 and min(image.shape) > 1
    affine = np.asarray(case_fig.get("affine", np.eye(4)), dtype=np.float64)
    lesion = np.asarray(case_fig["lesion_array"])
    maps = {m: np.asarray(case_fig["maps"][m]) for m in shown}
    to_ras = _to_ras(image.shape, affine)  # NiiVue's voxel coordinates are those of the volume turned to RAS
    lo, hi = (float(v) for v in np.percentile(image, [1, 99.5]))
    config = {
        "methods": shown,
        "volume": bool(volume),
        "window": [lo, hi],
        "range": [float(image.min()), float(image.max())],
        "threshold": MAP_THRESHOLD,
        "opacity": MAP_OPACITY,
        "lesionOpacity": LESION_OPACITY,
        "points": _jump_points(lesion, maps, shown, case_fig.get("findings")),
        "toRas": to_ras.tolist(),
    }
    volumes = {"image": _nifti_base64(image, affine, "image"), "lesion": _nifti_base64(lesion, affine, "label")}
    volumes.update({f"map:{m}": _nifti_base64(maps[m], affine, "map") for m in shown})
    scripts = "".join(
        f'<script type="application/octet-stream" class="nv-volume" data-name="{html.escape(name)}">{data}</script>'
        for name, data in volumes.items()
    )
    canvases = "".join(
        f'<figure class="nv-view"><div class="nv-box"><canvas data-method="{html.escape(m)}"></canvas></div>'
        f"<figcaption>{html.escape(m)}</figcaption></figure>"
        for m in shown
    )
    cmaps = "".join(f'<option value="{c}">{c}</option>' for c in ("inferno", "hot", "warm", "plasma", "viridis", "red"))
    views = ("multiplanar", "axial", "coronal", "sagittal", "render") if volume else ("axial",)
    view_options = "".join(f'<option value="{v}">{v}</option>' for v in views)
    span = max(hi - lo, 1e-6)
    full = max(config["range"][1] - config["range"][0], 1e-6)
    buttons = "".join(
        f'<button type="button" class="nv-jump" data-vox="{",".join(map(str, p["vox"]))}">{html.escape(p["label"])}'
        "</button>"
        for p in config["points"]
    )
    config_json = json.dumps(config).replace("</", "<\\/")
    return (
        f'<div class="nv-case" data-case="{html.escape(anchor)}"><h4>Multiplanar viewer (NiiVue {NIIVUE_VERSION})</h4>'
        f'<p class="nv-status">3D viewer: <button type="button" class="nv-open">open</button></p>'
        f'<div class="nv-views">{canvases}</div>'
        '<div class="nv-controls">'
        f'<label>map colours <select data-ctl="cmap">{cmaps}</select></label>'
        f'<label>map opacity <input type="range" data-ctl="opacity" min="0" max="1" step="0.05" value="{MAP_OPACITY}">'
        "</label>"
        f'<label>map threshold <input type="range" data-ctl="threshold" min="0" max="0.95" step="0.05" '
        f'value="{MAP_THRESHOLD}"></label>'
        f'<label>lesion opacity <input type="range" data-ctl="lesion" min="0" max="1" step="0.05" '
        f'value="{LESION_OPACITY}"></label>'
        f'<label>window <input type="range" data-ctl="window" min="{full / 100:.6g}" max="{full:.6g}" '
        f'step="{full / 200:.6g}" value="{span:.6g}"></label>'
        f'<label>level <input type="range" data-ctl="level" min="{config["range"][0]:.6g}" '
        f'max="{config["range"][1]:.6g}" step="{full / 200:.6g}" value="{(lo + hi) / 2:.6g}"></label>'
        f'<label>view <select data-ctl="view">{view_options}</select></label>'
        f'<p class="nv-jumps">go to: {buttons}</p></div>'
        f'<script type="application/json" class="nv-config">{config_json}</script>{scripts}</div>'
    )


def viewer_script() -> str:
    """The page's script tags for the viewers: NiiVue (beside the report) and the inline code that drives it."""
    return f'<script src="{NIIVUE_FILE}"></script>\n<script>{_SCRIPT}</script>'


_STYLE = """.nv-case{margin:1em 0;} .nv-views{display:flex;flex-wrap:wrap;gap:.5em;}
.nv-view{margin:0;text-align:center;} .nv-box{width:380px;height:380px;background:#000;}
.nv-controls label{display:inline-block;margin:.3em 1em .3em 0;} .nv-jumps button{margin:.2em;}"""

# Starts a case's viewers on demand; every control applies to all of a case's viewers; the crosshair
# is shared by broadcastTo (each viewer tells the others). Writes its state into data- attributes
# (data-ready; per canvas data-vox, data-tiles and data-rect: page position and pixel ratio) so that a
# test can read it from the DOM.
_SCRIPT = (
    """(function(){
var VIEWS={multiplanar:3,axial:0,coronal:1,sagittal:2,render:4};
function apply(m,v){return [0,1,2].map(function(r){return m[r][0]*v[0]+m[r][1]*v[1]+m[r][2]*v[2]+m[r][3];});}
function invert(m){  // an orientation matrix: a signed permutation plus a shift
  var r=[[0,0,0,0],[0,0,0,0],[0,0,0,0],[0,0,0,1]];
  for(var i=0;i<3;i++){for(var j=0;j<3;j++){r[j][i]=m[i][j];}}
  var t=apply(r,[0,0,0]),s=apply(r,[m[0][3],m[1][3],m[2][3]]);
  for(var k=0;k<3;k++){r[k][3]=t[k]-s[k];}
  return r;
}
function vox(box,nv){var v=apply(box.fromRas,nv.frac2vox(nv.scene.crosshairPos));return v.map(Math.round).join(',');}
function report(box){box.viewers.forEach(function(nv,i){var c=box.canvases[i],r=c.getBoundingClientRect();
  c.setAttribute('data-vox',vox(box,nv));
  c.setAttribute('data-rect',[r.left+window.scrollX,r.top+window.scrollY,c.width/r.width].join(','));
  box.canvases[i].setAttribute('data-tiles',JSON.stringify(nv.screenSlices.map(function(s){
    return {type:s.axCorSag,ltwh:s.leftTopWidthHeight};})));});}
function redraw(box){box.viewers.forEach(function(nv){nv.updateGLVolume();nv.drawScene();});report(box);}
function control(box,name,value){
  box.viewers.forEach(function(nv){
    var map=nv.volumes[1],img=nv.volumes[0],les=nv.volumes[2];
    if(name==='cmap'){map.colormap=value;}
    if(name==='opacity'){map.opacity=parseFloat(value);}
    if(name==='threshold'){map.cal_min=parseFloat(value);}
    if(name==='lesion'&&les){les.opacity=parseFloat(value);}
    if(name==='window'||name==='level'){
      var w=parseFloat(box.querySelector('[data-ctl=window]').value);
      var l=parseFloat(box.querySelector('[data-ctl=level]').value);
      img.cal_min=l-w/2;img.cal_max=l+w/2;}
    if(name==='view'){nv.setSliceType(VIEWS[value]);}
    if(name==='crosshair'){nv.setCrosshairWidth(parseFloat(value));}
  });
  redraw(box);
}
function jump(box,text){
  var v=text.split(',').map(Number),first=box.viewers[0];
  while(v.length<3){v.push(0);}
  v=apply(box.toRas,v);
  box.canvases[0].focus();  // NiiVue broadcasts from the focused canvas only
  first.scene.crosshairPos=first.vox2frac(v);first.drawScene();first.sync();
  box.viewers.forEach(function(nv){nv.drawScene();});report(box);
}
function volume(box,name,opts){
  var el=box.querySelector('script.nv-volume[data-name="'+name+'"]');
  opts.base64=el.textContent.trim();opts.name=name.replace(':','_')+'.nii.gz';
  return niivue.NVImage.loadFromBase64(opts);
}
async function start(box){
  if(box.started){return box.started;}
  box.started=(async function(){
    var cfg=JSON.parse(box.querySelector('script.nv-config').textContent);
    box.viewers=[];box.canvases=[];box.toRas=cfg.toRas;box.fromRas=invert(cfg.toRas);
    for(var i=0;i<cfg.methods.length;i++){
      var m=cfg.methods[i],canvas=box.querySelector('canvas[data-method="'+m+'"]');
      var nv=new niivue.Niivue({logLevel:'silent',backColor:[0,0,0,1],show3Dcrosshair:true,isColorbar:false,
        isOrientCube:false,crosshairColor:[0.2,1,0.2,1],multiplanarLayout:2,
        multiplanarShowRender:cfg.volume?niivue.SHOW_RENDER.ALWAYS:niivue.SHOW_RENDER.NEVER});
      await nv.attachToCanvas(canvas);
      nv.addVolume(await volume(box,'image',{colormap:'gray',cal_min:cfg.window[0],cal_max:cfg.window[1]}));
      nv.addVolume(await volume(box,'map:'+m,{colormap:'inferno',cal_min:cfg.threshold,cal_max:1,opacity:cfg.opacity}));
      nv.addVolume(await volume(box,'lesion',{colormap:'green',cal_min:0.5,cal_max:1,opacity:cfg.lesionOpacity}));
      nv.setSliceType(cfg.volume?VIEWS.multiplanar:VIEWS.axial);
      box.viewers.push(nv);box.canvases.push(canvas);
    }
    box.viewers.forEach(function(a){
      a.broadcastTo(box.viewers.filter(function(b){return b!==a;}),{'2d':true,'3d':true});});
    box.querySelectorAll('[data-ctl]').forEach(function(el){
      el.addEventListener('input',function(){control(box,el.getAttribute('data-ctl'),el.value);});});
    box.querySelectorAll('button.nv-jump').forEach(function(b){
      b.addEventListener('click',function(){jump(box,b.getAttribute('data-vox'));});});
    box.viewers.forEach(function(nv){nv.onLocationChange=function(){report(box);};});
    box.querySelector('.nv-status').textContent='3D viewer: NiiVue """
    + NIIVUE_VERSION
    + """';
    report(box);box.setAttribute('data-ready','1');
  })().catch(function(e){  // no WebGL (a browser without it, or with the GPU disabled): the PNG viewer above stays
    box.querySelector('.nv-status').textContent='3D viewer unavailable here: '+e;
    box.setAttribute('data-error',String(e));});
  return box.started;
}
var boxes=document.querySelectorAll('.nv-case');
if(!window.niivue){boxes.forEach(function(b){b.querySelector('.nv-status').textContent=
  '3D viewer unavailable: """
    + NIIVUE_FILE
    + """ is not beside this report';});return;}
boxes.forEach(function(b){b.querySelector('button.nv-open').addEventListener('click',function(){start(b);});});
async function fromHash(){
  var parts=decodeURIComponent(location.hash.slice(1)).split('/');
  var box=document.querySelector('.nv-case[data-case="'+parts[0]+'"]');
  if(!box){return;}
  await start(box);
  for(var j=1;j<parts.length;j++){
    var kv=parts[j].split('=');
    if(kv[0]==='view'&&VIEWS.hasOwnProperty(kv[1])){box.querySelector('[data-ctl=view]').value=kv[1];control(box,'view',kv[1]);}
    if(kv[0]==='opacity'){box.querySelector('[data-ctl=opacity]').value=kv[1];control(box,'opacity',kv[1]);}
    if(kv[0]==='crosshair'){control(box,'crosshair',kv[1]);}
    if(kv[0]==='vox'){jump(box,kv[1]);}
  }
  box.setAttribute('data-hash',location.hash);
}
window.addEventListener('hashchange',fromHash);fromHash();
})();"""
)
