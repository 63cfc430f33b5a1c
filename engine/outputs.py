"""The output nodes' engine calls (the nodes are ``nodes/output_nodes.py`` and ``nodes/video_nodes.py``): the
ranked grid, the score-vs-NFE plot, the winner saved with the search's report next to ComfyUI's own workflow
metadata, and the video contact sheet."""
from __future__ import annotations

import json
import os
from typing import Dict, List

import torch

from . import files
from .drawing import caption, ranked_grid, score_plot, to_pil
from ..search.video import VideoInputError, split_videos

# the PNG text chunk holding the search report (JSON), beside ComfyUI's "prompt" and "workflow"
REPORT_CHUNK = "infscale_search"


def _ordered(images: torch.Tensor, scores):
    """(images, results) in rank order.  A VerifierScore report ("external")
    scores a batch in index order; a search's report comes with its top-k
    images, already best first."""
    ranked = scores.ranked()
    if scores.algorithm == "external" and len(scores.candidates) == images.shape[0]:
        by_index = sorted(scores.candidates, key=lambda c: c.index)
        pos = {c.index: i for i, c in enumerate(by_index)}
        idx = torch.tensor([pos[c.index] for c in ranked], dtype=torch.long)
        return images[idx], ranked
    n = min(images.shape[0], len(ranked))
    return images[:n], ranked[:n]


def ranked_grid_of(images: torch.Tensor, scores, columns: int) -> torch.Tensor:
    """Ranked Grid: a scored batch (or a search's top k) as one captioned grid, best first."""
    if images.shape[0] == 0 or not scores.candidates:
        raise ValueError("Ranked Grid got an empty batch (0 images or 0 scores): connect the scored candidates; "
                         "no placeholder image is made")
    if (scores.settings or {}).get("video"):
        raise ValueError("Ranked Grid got the scores of videos (their images are frames, video after video): "
                         "use Video Contact Sheet, which draws one row per video")
    imgs, results = _ordered(images, scores)
    labels = [caption(r.rank, r.score, r.seed, r.noise_id if r.seed is None else "") for r in results]
    return ranked_grid(imgs, labels, columns)


def score_plot_of(scores, width: int, height: int, scores_2=None, scores_3=None) -> torch.Tensor:
    """Score vs NFE Plot: each search's best score so far against NFEs (and the held-out guard's curve)."""
    series, held = {}, {}
    for i, rep in enumerate(r for r in (scores, scores_2, scores_3) if r is not None):
        name = f"{i + 1}: {rep.algorithm}"
        series[name] = [(float(t["nfe"]), float(t["best"])) for t in rep.trace]
        h = getattr(rep, "held_out", None) or {}
        if h.get("trace"):  # the guard's curve: the held-out score of what the search would pick
            held[f"{i + 1}: held-out"] = [(float(t["nfe"]), float(t["held_out"])) for t in h["trace"]]
    label = next((f"held-out: {r.held_out['verifier'][:40]}" for r in (scores, scores_2, scores_3)
                  if r is not None and getattr(r, "held_out", None)), "held-out")
    return score_plot(series, title=f"verifier: {scores.verifier[:80]}", width=width, height=height,
                       right_series=held, right_label=label)


def save_search_images(images: torch.Tensor, scores, filename_prefix: str = "search", prompt=None,
                       extra_pnginfo=None) -> List[Dict[str, str]]:
    """Save Image with Search Metadata: the PNGs (ComfyUI's workflow metadata and the report), their UI entries."""
    if images.shape[0] == 0:
        raise ValueError("Save Image with Search Metadata got an empty IMAGE batch (0 images): nothing to save")
    from PIL.PngImagePlugin import PngInfo
    out_dir = files.output_directory()
    folder, filename, counter, subfolder, _ = files.save_image_path(filename_prefix, out_dir,
                                                                      images.shape[2], images.shape[1])
    report = scores.to_json(indent=None)
    results = []
    for b, image in enumerate(images):
        meta = PngInfo()
        if not files.metadata_disabled():
            if prompt is not None:
                meta.add_text("prompt", json.dumps(prompt))
            for k, v in (extra_pnginfo or {}).items():
                meta.add_text(k, json.dumps(v))
        meta.add_text(REPORT_CHUNK, report)  # the search's own record, even with --disable-metadata
        name = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.png"
        to_pil(image).save(os.path.join(folder, name), pnginfo=meta, compress_level=4)
        results.append({"filename": name, "subfolder": subfolder, "type": "output"})
        counter += 1
    return results


def contact_sheet(images: torch.Tensor, scores) -> torch.Tensor:
    """Video Contact Sheet: one row per scored video, best first, the frames its score came from."""
    video = (scores.settings or {}).get("video")
    if not video or not video.get("frames_per_video"):
        raise ValueError("Video Contact Sheet needs the scores of a video search (or of Verifier Score with "
                         "frames_per_video set): these scores are of images; use Ranked Grid for images")
    t = int(video["frames_per_video"])
    try:
        videos = split_videos(images, t)
    except VideoInputError as e:
        raise ValueError(f"Video Contact Sheet: {e}") from e
    ranked = scores.ranked()
    if scores.algorithm == "external" and len(scores.candidates) == videos.shape[0]:
        pos = {c.index: i for i, c in enumerate(sorted(scores.candidates, key=lambda c: c.index))}
        order = [pos[c.index] for c in ranked]
    else:  # a search's top-k, already best first
        order = list(range(min(videos.shape[0], len(ranked))))
    if not order:
        raise ValueError("Video Contact Sheet got no scored video: connect the scored candidates")
    idx = torch.as_tensor(list(video.get("scored_frames") or range(t)), dtype=torch.long)
    rows = videos[torch.as_tensor(order, dtype=torch.long)][:, idx]        # n x k x H x W x 3
    tiles = rows.permute(0, 2, 1, 3, 4).reshape(rows.shape[0], rows.shape[2], -1, rows.shape[-1])
    labels = [caption(r.rank, r.score, r.seed, r.noise_id if r.seed is None else "") for r in ranked[:len(order)]]
    return ranked_grid(tiles, labels, columns=1)
