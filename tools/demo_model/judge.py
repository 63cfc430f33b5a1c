"""The held-out judge: does an image show its caption?  Evaluation only (the search never sees it).

    from judge import load_judge, verdicts
    judge = load_judge()
    ok = verdicts(judge, ["winner.png", "baseline.png"], "a small red circle at the top left")  # [True, False]

An image is judged to match when every attribute the caption names is right
(size, colour, shape and its cell of the 3 x 3 grid).
No ComfyUI import: plain torch, the weights in tools/demo_model/weights/.
"""
from __future__ import annotations

import os
import sys
from typing import List, Sequence, Union

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import nets  # noqa: E402
import shapes_data as S  # noqa: E402

JUDGE_FILE = os.path.join(HERE, "weights", "judge.safetensors")


def load_judge(path: str = JUDGE_FILE) -> nets.Judge:
    from safetensors.torch import load_file
    judge = nets.Judge()
    judge.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return judge.eval().requires_grad_(False)


def read_images(items: Sequence[Union[str, torch.Tensor]]) -> torch.Tensor:
    """PNG paths (64 x 64 RGB, or a multiple of it: downscaled by box filtering) or 3 x 64 x 64 tensors in [0, 1]
    -> n x 3 x 64 x 64."""
    from PIL import Image
    out = []
    for it in items:
        if isinstance(it, torch.Tensor):
            out.append(it.float())
            continue
        im = Image.open(it).convert("RGB")
        if im.size != (S.SIZE, S.SIZE):
            im = im.resize((S.SIZE, S.SIZE), Image.BOX)
        out.append(torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


@torch.no_grad()
def verdicts(judge: nets.Judge, images, caption: str) -> List[bool]:
    """For each image: does it show ``caption`` (a caption of the demo grammar)?"""
    spec = S.parse(caption)
    x = images if isinstance(images, torch.Tensor) else read_images(images)
    return [bool(v) for v in S.matches(judge.predict(x), spec)]


@torch.no_grad()
def describe(judge: nets.Judge, images) -> List[str]:
    """What the judge sees in each image, as a caption of the grammar."""
    x = images if isinstance(images, torch.Tensor) else read_images(images)
    return [S.Spec(size, colour, shape, cell).caption for size, colour, shape, cell in judge.predict(x).tolist()]
