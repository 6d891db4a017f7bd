"""A self-contained HTML report of a model on a dataset split.

One file, no script and no external resource (styles inline, charts as inline SVG, images as
``data:`` URIs), so it opens anywhere without network access. Sections: COCO summary
metrics, the per-class AP table (COCOeval, :class:`~dfine_cli.engine.evaluator.EvalResult`),
precision-recall curves at IoU 0.5 (:mod:`dfine_cli.viz.pr_curves`), the confusion matrix,
and a gallery of the images with the most errors: ground truth in green, correct detections
in their class colour, false positives in red (``FP``), missed objects in orange (``FN``).
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.detector_options import DEFAULT_CONF
from dfine_cli.engine.evaluate import ImagePrediction
from dfine_cli.engine.evaluator import EvalResult
from dfine_cli.fileio import atomic_open
from dfine_cli.viz.pr_curves import (
    ImageMatch,
    PRCurve,
    class_pr_curves,
    confusion_matrix,
    match_image,
)

log = logging.getLogger("dfine.viz.report")

GT_COLOR = (60, 180, 75)  # RGB
FP_COLOR = (230, 25, 25)
FN_COLOR = (245, 130, 48)
GALLERY_MAX_SIDE = 640
MAX_DRAWN = 60  # detections drawn per gallery image, best first


@dataclass(frozen=True)
class ImageErrors:
    """Errors of one image at the report's confidence threshold and IoU."""

    index: int  # into the predictions list
    false_positives: int
    false_negatives: int
    match: ImageMatch  # of the kept detections

    @property
    def total(self) -> int:
        return self.false_positives + self.false_negatives


def kept(p: ImagePrediction, conf: float) -> np.ndarray:
    """Indices of the detections with score ``>= conf`` (scores are sorted, best first)."""
    return np.flatnonzero(p.scores >= conf)


def image_errors(predictions: Sequence[ImagePrediction], conf: float, iou: float) -> list[ImageErrors]:
    """False positives and negatives of every image (detections with score ``>= conf``)."""
    out = []
    for i, p in enumerate(predictions):
        keep = kept(p, conf)
        m = match_image(p.gt_boxes, p.gt_labels, p.boxes[keep], p.labels[keep], p.scores[keep], iou)
        out.append(ImageErrors(i, m.false_positives, m.false_negatives, m))
    return out


def worst_images(errors: Sequence[ImageErrors], count: int) -> list[ImageErrors]:
    """The ``count`` images with the most errors (ties: fewer first-index wins), errors > 0."""
    ranked = sorted((e for e in errors if e.total > 0), key=lambda e: (-e.total, e.index))
    return ranked[:count]


# --------------------------------------------------------------------------- drawing


def rgb_hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def class_rgb(label: int) -> tuple[int, int, int]:
    from dfine_cli.draw import class_color

    b, g, r = class_color(label)
    return r, g, b


def draw_errors(
    image_rgb: np.ndarray, p: ImagePrediction, keep: np.ndarray, match: ImageMatch,
    class_names: Sequence[str],
) -> np.ndarray:
    """An RGB copy of the image with ground truth, TP/FP detections and FN boxes drawn."""
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()
    canvas = np.ascontiguousarray(image_rgb.copy())
    scale = min(1.0, GALLERY_MAX_SIDE / max(canvas.shape[:2]))
    if scale < 1.0:
        canvas = cv2.resize(canvas, (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale)),
                            interpolation=cv2.INTER_AREA)
    thick = max(1, round(max(canvas.shape[:2]) / 320))
    font = max(0.35, max(canvas.shape[:2]) / 1400)

    def box(xyxy: np.ndarray, color: tuple[int, int, int], width: int, text: str | None) -> None:
        x1, y1, x2, y2 = (round(float(v) * scale) for v in xyxy)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, width)
        if text:
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            top = max(0, y1 - th - base - 2)
            cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), color, -1)
            cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font,
                        (255, 255, 255), 1, cv2.LINE_AA)

    for j, g_box in enumerate(p.gt_boxes):
        if match.gt_matched[j]:
            box(g_box, GT_COLOR, thick, None)
    for k, i in enumerate(keep[:MAX_DRAWN]):
        label = int(p.labels[i])
        name = class_names[label] if label < len(class_names) else str(label)
        if match.det_tp[k]:
            box(p.boxes[i], class_rgb(label), thick, f"{name} {p.scores[i]:.2f}")
        else:
            box(p.boxes[i], FP_COLOR, thick, f"FP {name} {p.scores[i]:.2f}")
    for j, (g_box, g_label) in enumerate(zip(p.gt_boxes, p.gt_labels, strict=True)):
        if not match.gt_matched[j]:  # on top: a missed object must stay visible
            box(g_box, FN_COLOR, thick + 1, f"FN {class_names[int(g_label)]}")
    return canvas


def jpeg_data_uri(image_rgb: np.ndarray, quality: int = 85) -> str:
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


# --------------------------------------------------------------------------- HTML parts


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    return f"{value:.{digits}f}"


def pr_curves_svg(curves: Sequence[PRCurve], class_names: Sequence[str], size: int = 420) -> str:
    """One SVG chart: precision (y) against recall (x) per class, with a legend."""
    pad, legend_w = 44, 180
    inner = size - 2 * pad
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + legend_w}" height="{size}" '
        f'viewBox="0 0 {size + legend_w} {size}" role="img" aria-label="precision-recall curves">',
        f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="#fafafa" stroke="#999"/>',
    ]
    for t in range(0, 11, 2):
        v = t / 10
        x, y = pad + v * inner, pad + (1 - v) * inner
        parts.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{pad + inner}" stroke="#e3e3e3"/>')
        parts.append(f'<line x1="{pad}" y1="{y:.1f}" x2="{pad + inner}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{x:.1f}" y="{pad + inner + 14}" font-size="10" text-anchor="middle">{v:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text x="{pad + inner / 2}" y="{size - 6}" font-size="12" text-anchor="middle">recall</text>')
    parts.append(f'<text x="12" y="{pad + inner / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 12 {pad + inner / 2})">precision</text>')
    for label, curve in enumerate(curves):
        color = rgb_hex(class_rgb(label))
        if len(curve.recall):
            envelope = np.maximum.accumulate(curve.precision[::-1])[::-1]
            pts = [(0.0, float(envelope[0])), *list(zip(curve.recall.tolist(), envelope.tolist()))]
            step = max(1, len(pts) // 400)  # keep the file small for long curves
            coords = " ".join(f"{pad + r * inner:.1f},{pad + (1 - p) * inner:.1f}"
                              for r, p in [*pts[::step], pts[-1]])
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"/>')
        y = pad + 14 * label
        name = html.escape(str(class_names[label]))
        parts.append(f'<rect x="{size + 4}" y="{y - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{size + 18}" y="{y + 1}" font-size="11">{name} (AP50 {_fmt(curve.ap, 2)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def confusion_html(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix as a table; cell shade = share of its true-class row."""
    names = [html.escape(str(n)) for n in class_names] + ["background"]
    head = "".join(f"<th>{n}</th>" for n in names)
    rows = []
    for i, row in enumerate(matrix):
        total = max(int(row.sum()), 1)
        cells = []
        for _j, count in enumerate(row):
            share = count / total
            style = f"background: rgba(31, 119, 180, {0.08 + 0.85 * share:.2f})" if count else ""
            cells.append(f'<td style="{style}">{int(count)}</td>')
        rows.append(f"<tr><th>{names[i]}</th>{''.join(cells)}</tr>")
    return (f'<table class="cm"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.cm td { min-width: 38px; text-align: center; }
.gallery { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figure img { display: block; max-width: 640px; border: 1px solid #bbb; }
figcaption { font-size: 12px; margin-top: 4px; }
.key span { display: inline-block; padding: 1px 6px; margin-right: 8px; color: #fff; font-size: 12px; }
.muted { color: #666; font-size: 13px; }
"""


def build_report(
    predictions: Sequence[ImagePrediction],
    class_names: Sequence[str],
    result: EvalResult,
    *,
    title: str,
    conf: float = DEFAULT_CONF,
    iou: float = 0.5,
    gallery: int = 12,
    subtitle: str = "",
) -> str:
    """The report's HTML text (see the module docstring)."""
    from dfine_cli.media import read_image_rgb

    num_classes = len(class_names)
    all_matches = [match_image(p.gt_boxes, p.gt_labels, p.boxes, p.labels, p.scores, iou)
                   for p in predictions]
    curves = class_pr_curves([p.gt_labels for p in predictions], [p.labels for p in predictions],
                             [p.scores for p in predictions], all_matches, num_classes)
    errors = image_errors(predictions, conf, iou)
    keeps = [kept(p, conf) for p in predictions]
    matrix = confusion_matrix([p.gt_boxes for p in predictions], [p.gt_labels for p in predictions],
                              [p.boxes[k] for p, k in zip(predictions, keeps, strict=True)],
                              [p.labels[k] for p, k in zip(predictions, keeps, strict=True)],
                              num_classes, iou)
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                    for k, v in result.stats.items())
    per_class = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{c.num_gt}</td><td>{_fmt(c.ap)}</td>"
        f"<td>{_fmt(c.ap50)}</td><td>{_fmt(c.precision)}</td><td>{_fmt(c.recall)}</td></tr>"
        for c in result.per_class
    )
    figures = []
    for e in worst_images(errors, gallery):
        p = predictions[e.index]
        drawn = draw_errors(read_image_rgb(p.path), p, keeps[e.index], e.match, class_names)
        figures.append(
            f'<figure><img alt="image {p.image_id}" src="{jpeg_data_uri(drawn)}">'
            f"<figcaption>{html.escape(p.path.name)} (id {p.image_id}): "
            f"{e.false_positives} false positive(s), {e.false_negatives} missed</figcaption></figure>"
        )
    total_fp = sum(e.false_positives for e in errors)
    total_fn = sum(e.false_negatives for e in errors)
    key = (f'<p class="key"><span style="background:{rgb_hex(GT_COLOR)}">ground truth</span>'
           f'<span style="background:#555">detection (class colour)</span>'
           f'<span style="background:{rgb_hex(FP_COLOR)}">FP: false positive</span>'
           f'<span style="background:{rgb_hex(FN_COLOR)}">FN: missed object</span></p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(subtitle)} {len(predictions)} images, {result.num_detections} detections
evaluated (top-K per image, COCOeval {html.escape(result.backend)}). Errors, the confusion matrix and
the gallery use detections with score &ge; {conf:g} and IoU &ge; {iou:g}.</p>
<h2>COCO metrics</h2>
<table><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>{stats}</tbody></table>
<h2>Per-class AP</h2>
<table id="per-class"><thead><tr><th>class</th><th>ground truth</th><th>AP</th><th>AP50</th>
<th>precision</th><th>recall</th></tr></thead><tbody>{per_class}</tbody></table>
<p class="muted">AP: IoU 0.50:0.95; precision/recall: COCOeval's best-F1 point at IoU 0.50.</p>
<h2>Precision-recall curves (IoU {iou:g})</h2>
{pr_curves_svg(curves, class_names)}
<h2>Confusion matrix (score &ge; {conf:g}, IoU &ge; {iou:g})</h2>
{confusion_html(matrix, class_names)}
<h2>Images with the most errors</h2>
<p class="muted">{total_fp} false positives and {total_fn} missed objects over all images;
the {len(figures)} worst images are shown.</p>
{key}
<div class="gallery">{''.join(figures) or '<p>No errors at this threshold.</p>'}</div>
</body></html>
"""


@dataclass(frozen=True)
class ReportSummary:
    output: Path
    images: int
    ap: float
    ap50: float
    false_positives: int
    false_negatives: int
    gallery: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output), "images": self.images,
            "AP": None if math.isnan(self.ap) else self.ap,
            "AP50": None if math.isnan(self.ap50) else self.ap50,
            "false_positives": self.false_positives, "false_negatives": self.false_negatives,
            "gallery_images": self.gallery,
        }


def write_report(
    output: str | Path,
    predictions: Sequence[ImagePrediction],
    class_names: Sequence[str],
    result: EvalResult,
    *,
    title: str,
    conf: float = DEFAULT_CONF,
    iou: float = 0.5,
    gallery: int = 12,
    subtitle: str = "",
) -> ReportSummary:
    """Build the report and write it atomically to ``output``."""
    text = build_report(predictions, class_names, result, title=title, conf=conf, iou=iou,
                        gallery=gallery, subtitle=subtitle)
    with atomic_open(output, "w") as fh:
        fh.write(text)
    errors = image_errors(predictions, conf, iou)
    return ReportSummary(
        output=Path(output), images=len(predictions), ap=result.stats["AP"],
        ap50=result.stats["AP50"], false_positives=sum(e.false_positives for e in errors),
        false_negatives=sum(e.false_negatives for e in errors),
        gallery=len(worst_images(errors, gallery)),
    )
