"""Writes the example workflows in workflows/ (ComfyUI's UI / LiteGraph format).

Run after changing a node's inputs: `python tools/make_workflows.py`.  Each
workflow is a list of nodes with their links; widgets_values follow each
node's INPUT_TYPES order (required, then optional), with the extra "control
after generate" value after seed widgets.  The test suite validates every file
against the live /object_info, converts it and executes it on a real server.

Model names are the published files (the tests map them to tiny checkpoints of
the same architecture)."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from search import get_algorithm  # noqa: E402  (the registry: the strategy nodes' widgets and defaults)


def strategy_widgets(name: str, budget_nfe: int = 0, **overrides):
    """A strategy node's widget values in the editor's order: the registry's required parameters at their
    defaults (or ``overrides``), then budget_nfe."""
    p = get_algorithm(name).resolve(overrides)
    return [p[x.name] for x in get_algorithm(name).params if not x.optional] + [budget_nfe]

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "workflows")

P = "InfScale_"
CLIP_L14 = "ViT-L-14-openai.safetensors"      # open_clip_model.safetensors of timm/vit_large_patch14_clip_224.openai
AESTHETIC = "sac+logos+ava1-l14-linearMSE.pth"  # LAION improved aesthetic predictor head
IMAGEREWARD = "ImageReward"                     # folder: ImageReward.pt, med_config.json, vocab.txt
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
SD35M = "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"  # Comfy-Org's single-file SD3.5 medium
WAN21 = "wan2.1_t2v_1.3B_fp16.safetensors"      # Comfy-Org's repackaged Wan 2.1 files
WAN_TE = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
LTXV = "ltx-video-2b-v0.9.5.safetensors"       # Lightricks' LTX-Video checkpoint (diffusion model + VAE)
LTXV_TE = "t5xxl_fp16.safetensors"
WAN22_5B = "wan2.2_ti2v_5B_fp16.safetensors"    # Comfy-Org's repackaged Wan 2.2 files
WAN22_VAE = "wan2.2_vae.safetensors"
WAN22_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
WAN22_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"

# column x positions, so every workflow reads left to right
X = [0, 380, 760, 1180, 1600]

SEARCH_OUTPUTS = [("image", "IMAGE"), ("latent", "LATENT"), ("top_k_images", "IMAGE"),
                  ("scores", "INFSCALE_SCORES"), ("winner_noise", "LATENT"), ("best_seed", "INT"),
                  ("noise", "NOISE")]
SEARCH_INPUTS = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                 ("latent", "LATENT"), ("vae", "VAE"), ("verifier", "INFSCALE_VERIFIER"),
                 ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("strategy", "INFSCALE_STRATEGY"),
                 ("guider", "GUIDER")]


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, pos, widgets=(), inputs=(), outputs=(), size=(320, 120), title=None):
        nid = len(self.nodes) + 1
        n = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
             "order": nid - 1, "mode": 0,
             "inputs": [{"name": i[0], "type": i[1], "link": None} for i in inputs],
             "outputs": [{"name": o, "type": t, "links": [], "slot_index": i} for i, (o, t) in enumerate(outputs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            n["title"] = title
        if type_ in ("Note", "MarkdownNote"):
            n["properties"] = {}
            n["color"], n["bgcolor"] = "#432", "#653"
        self.nodes.append(n)
        return nid

    def out(self, nid, name):
        outs = self.nodes[nid - 1]["outputs"]
        return nid, [o["name"] for o in outs].index(name)

    def link(self, src, dst, dst_input):
        """src: (node id, output slot) or (node id, output name)."""
        nid, slot = src
        if isinstance(slot, str):
            nid, slot = self.out(nid, slot)
        lid = len(self.links) + 1
        s, d = self.nodes[nid - 1], self.nodes[dst - 1]
        names = [i["name"] for i in d["inputs"]]
        dslot = names.index(dst_input)
        typ = s["outputs"][slot]["type"]
        d["inputs"][dslot]["link"] = lid
        s["outputs"][slot]["links"].append(lid)
        self.links.append([lid, nid, slot, dst, dslot, typ])

    def widget_input(self, nid, name, typ):
        """Turn widget ``name`` of node ``nid`` into an input (to connect a PrimitiveNode to it)."""
        self.nodes[nid - 1]["inputs"].append({"name": name, "type": typ, "link": None, "widget": {"name": name}})

    def note(self, pos, text, size=(360, 300), markdown=False):
        return self.node("MarkdownNote" if markdown else "Note", pos, [text], size=size, title="Read me")

    def dump(self, name):
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
              "version": 0.4}
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")


# --------------------------------------------------------------------------- building blocks
def checkpoint(g, name, pos=(X[0], 0)):
    return g.node("CheckpointLoaderSimple", pos, [name], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                  size=(340, 100))


def text_encoders(g, ckpt, positive, negative, x=X[1]):
    pos = g.node("CLIPTextEncode", (x, 0), [positive], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], size=(340, 140), title="Positive prompt")
    neg = g.node("CLIPTextEncode", (x, 180), [negative], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")], size=(340, 110), title="Negative prompt")
    g.link((ckpt, "CLIP"), pos, "clip")
    g.link((ckpt, "CLIP"), neg, "clip")
    return pos, neg


def empty_latent(g, size, pos=(X[1], 330), batch=1, sd3=False):
    return g.node("EmptySD3LatentImage" if sd3 else "EmptyLatentImage", pos, [size, size, batch],
                  outputs=[("LATENT", "LATENT")], size=(340, 110))


def clipscore(g, pos=(X[1], 480)):
    return g.node(P + "CLIPScoreVerifierLoader", pos, ["ViT-L-14", CLIP_L14, "clipscore", False],
                  outputs=[("verifier", "INFSCALE_VERIFIER")], size=(340, 130))


def search_loop(g, prompt, seed=0, candidates=16, top_k=4, sampler="euler", scheduler="normal", steps=20, cfg=7.0,
                denoise=1.0, pos=(X[2], 0), title=None, extra_inputs=()):
    return g.node(P + "SearchLoop", pos,
                  [prompt, seed, "randomize", candidates, top_k, sampler, scheduler, steps, cfg, denoise, 0, True],
                  inputs=SEARCH_INPUTS + list(extra_inputs), outputs=SEARCH_OUTPUTS, size=(380, 600), title=title)


def wire_search(g, search, ckpt, pos, neg, latent, verifier, vae=None):
    g.link((ckpt, "MODEL"), search, "model")
    g.link((pos, 0), search, "positive")
    g.link((neg, 0), search, "negative")
    g.link((latent, 0), search, "latent")
    g.link(vae or (ckpt, "VAE"), search, "vae")
    g.link((verifier, 0), search, "verifier")


def video_scoring(g, pos, widgets=("first/middle/last", 3, "mean", 1.0, 2), size=(340, 160)):
    """A Video Scoring node (pick, frames, aggregate, preview_keep, preview_warmup)."""
    return g.node(P + "VideoScoring", pos, list(widgets), outputs=[("video_scoring", "INFSCALE_VIDEO_SCORING")],
                  size=size)


def wire_video_search(g, search, model, pos, neg, latent, vae, verifier, scoring):
    """wire_search for a video graph: the model from ``model``'s MODEL output, the VAE from a VAE loader, and
    the Video Scoring node."""
    wire_search(g, search, model, pos, neg, latent, verifier, vae=(vae, "VAE"))
    g.link((scoring, 0), search, "video_scoring")


def save_with_report(g, search, prefix, pos=(X[3], 0)):
    n = g.node(P + "SaveSearchImage", pos, [prefix], inputs=[("images", "IMAGE"), ("scores", "INFSCALE_SCORES")],
               size=(380, 400))
    g.link((search, "image"), n, "images")
    g.link((search, "scores"), n, "scores")
    return n


def ranked_grid(g, search, pos=(X[3], 440), columns=4):
    grid = g.node(P + "RankedGrid", pos, [columns], inputs=[("images", "IMAGE"), ("scores", "INFSCALE_SCORES")],
                  outputs=[("grid", "IMAGE")], size=(300, 80))
    prev = g.node("PreviewImage", (pos[0], pos[1] + 120), [], inputs=[("images", "IMAGE")], size=(380, 320),
                  title="Top k, ranked")
    g.link((search, "top_k_images"), grid, "images")
    g.link((search, "scores"), grid, "scores")
    g.link((grid, 0), prev, "images")
    return grid


def score_plot(g, scores_src, pos=(X[4], 0)):
    plot = g.node(P + "ScorePlot", pos, [640, 400], inputs=[("scores", "INFSCALE_SCORES"),
                                                           ("scores_2", "INFSCALE_SCORES"),
                                                           ("scores_3", "INFSCALE_SCORES")],
                  outputs=[("plot", "IMAGE")], size=(300, 130))
    prev = g.node("PreviewImage", (pos[0], pos[1] + 170), [], inputs=[("images", "IMAGE")], size=(380, 300),
                  title="Best score vs NFEs")
    g.link(scores_src, plot, "scores")
    g.link((plot, 0), prev, "images")
    return plot


SEED_NOTE = ("The seed widget is set to *randomize*: with *increment* the next run would re-score N - 1 of this "
             "run's candidates. Candidate i has seed `seed + i`; `best_seed` in a stock KSampler with the same "
             "settings gives the winner's image.")
CLIP_NOTE = (f"Verifier files go in `models/verifiers`: `{CLIP_L14}` (open_clip_model.safetensors of "
             "timm/vit_large_patch14_clip_224.openai, renamed). The loader's `download_missing` fetches "
             "published files when switched on (off by default).")


# --------------------------------------------------------------------------- workflows
def sd15_random_search():
    g = Graph()
    prompt = "a photo of a red fox in the snow, golden hour"
    ckpt = checkpoint(g, SD15)
    pos, neg = text_encoders(g, ckpt, prompt, "blurry, low quality")
    lat = empty_latent(g, 512)
    ver = clipscore(g)
    search = search_loop(g, prompt, candidates=16, top_k=4)
    wire_search(g, search, ckpt, pos, neg, lat, ver)
    save = g.node("SaveImage", (X[3], 0), ["infscale_winner"], inputs=[("images", "IMAGE")], size=(380, 400))
    g.link((search, "image"), save, "images")
    ranked_grid(g, search)
    js = g.node(P + "ScoresToJSON", (X[2], 880), [], inputs=[("scores", "INFSCALE_SCORES")],
                outputs=[("json", "STRING")], size=(300, 60))
    g.link((search, "scores"), js, "scores")
    g.note((X[0], 160), "\n\n".join([
        "RANDOM SEARCH (best of N), Ma et al. 2025, with Search Loop.",
        "Search Loop samples `candidates` (N) starting noises with this model and sampler, decodes each, scores it "
        "with the verifier against `prompt` and keeps the best; `top_k` re-renders the best k at batch 1 exactly "
        "as a stock KSampler would. The budget is N full generations (N x steps NFEs).",
        "Knobs: candidates = N (paper: up to 2880 NFEs, i.e. N = 96 at 30 steps; 16 here); top_k = how many "
        "winners come back; sampler/scheduler/steps/cfg/denoise as in KSampler; micro_batch 0 = sized from "
        "free VRAM. The prompt widget is what the verifier compares with (normally your prompt).",
        "Verifier: CLIPScore (mode clipscore = 2.5 x max(cos, 0), Hessel et al. 2021), one of the paper's "
        "verifiers. " + CLIP_NOTE, SEED_NOTE]), size=(340, 560))
    g.dump("sd15_random_search.json")


def sdxl_ensemble_search():
    g = Graph()
    prompt = "an isometric illustration of a cosy library inside a tree, warm light"
    ckpt = checkpoint(g, SDXL)
    pos, neg = text_encoders(g, ckpt, prompt, "blurry, low quality, watermark")
    lat = empty_latent(g, 1024)
    clip = clipscore(g, (X[1], 480))
    aes = g.node(P + "AestheticVerifierLoader", (X[1], 650), ["ViT-L-14", CLIP_L14, AESTHETIC, False],
                 outputs=[("verifier", "INFSCALE_VERIFIER")], size=(340, 150))
    ir = g.node(P + "ImageRewardVerifierLoader", (X[1], 840), [IMAGEREWARD],
                outputs=[("verifier", "INFSCALE_VERIFIER")], size=(340, 80))
    ens_inputs = [("verifier_1", "INFSCALE_VERIFIER")] + [(f"verifier_{i}", "INFSCALE_VERIFIER") for i in range(2, 7)]
    ens = g.node(P + "VerifierEnsemble", (X[2], 880), ["mean_rank", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                 inputs=ens_inputs, outputs=[("verifier", "INFSCALE_VERIFIER")], size=(340, 330))
    g.link((clip, 0), ens, "verifier_1")
    g.link((aes, 0), ens, "verifier_2")
    g.link((ir, 0), ens, "verifier_3")
    search = search_loop(g, prompt, candidates=16, top_k=4, sampler="dpmpp_2m", scheduler="karras", steps=30,
                         cfg=6.0)
    wire_search(g, search, ckpt, pos, neg, lat, ens)
    save_with_report(g, search, "sdxl_ensemble")
    ranked_grid(g, search)
    g.note((X[0], 160), "\n\n".join([
        "SDXL + VERIFIER ENSEMBLE (random search).",
        "The ensemble is the paper's: each verifier ranks the N candidates (1 = worst ... N = best, ties share "
        "the average rank) and the score is the weighted mean rank. Ma et al. 2025 found the ensemble the most "
        "robust choice across benchmarks: single verifiers are 'hacked' by the search (e.g. aesthetic alone "
        "drifts towards pretty but off-prompt images).",
        "Knobs: Verifier Ensemble mode = mean_rank (the paper's) or zscore (keeps how much better, not just the "
        "order); weight_i = each member's share (normalised); up to 6 members, chain ensembles for more. "
        "Search Loop: candidates N (16 here; the paper goes to 2880 NFEs), top_k, and the usual KSampler "
        "settings (SDXL base: ~30 steps, cfg 5-7, 1024 x 1024).",
        "Files in models/verifiers: " + CLIP_L14 + " (CLIP ViT-L/14 OpenAI, shared by CLIPScore and the "
        "aesthetic head), " + AESTHETIC + " (LAION improved aesthetic predictor), and a folder ImageReward/ "
        "with ImageReward.pt + med_config.json (THUDM/ImageReward) + vocab.txt (bert-base-uncased).",
        "Save Image with Search Metadata stores the whole report (seeds, every member's scores, NFEs) in the "
        "PNG. " + SEED_NOTE]), size=(340, 660))
    g.dump("sdxl_ensemble_search.json")


def sd3_guider_search():
    g = Graph()
    prompt = "a glass teapot full of blooming flowers on a windowsill, morning light"
    ckpt = checkpoint(g, SD35M)
    pos, neg = text_encoders(g, ckpt, prompt, "")
    lat = empty_latent(g, 1024, sd3=True)
    ver = clipscore(g)
    guider = g.node("CFGGuider", (X[1], 650), [4.5], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                                              ("negative", "CONDITIONING")],
                    outputs=[("GUIDER", "GUIDER")], size=(340, 100))
    g.link((ckpt, "MODEL"), guider, "model")
    g.link((pos, 0), guider, "positive")
    g.link((neg, 0), guider, "negative")
    sampler = g.node("KSamplerSelect", (X[1], 790), ["euler"], outputs=[("SAMPLER", "SAMPLER")], size=(340, 60))
    sched = g.node("BasicScheduler", (X[1], 890), ["sgm_uniform", 28, 1.0], inputs=[("model", "MODEL")],
                   outputs=[("SIGMAS", "SIGMAS")], size=(340, 110))
    g.link((ckpt, "MODEL"), sched, "model")
    search = search_loop(g, prompt, candidates=8, top_k=2, steps=28, cfg=4.5, scheduler="sgm_uniform")
    wire_search(g, search, ckpt, pos, neg, lat, ver)
    g.link((guider, 0), search, "guider")
    g.link((sampler, 0), search, "sampler")
    g.link((sched, 0), search, "sigmas")
    save_with_report(g, search, "sd3_guider")
    ranked_grid(g, search)
    g.note((X[0], 160), "\n\n".join([
        "## SD3.5 with a GUIDER, SAMPLER and SIGMAS (current ComfyUI)",
        "Search Loop accepts the custom-sampling trio: a **GUIDER** (here CFGGuider; BasicGuider + FluxGuidance "
        "for FLUX), any **SAMPLER** and any **SIGMAS**. When connected they replace the KSampler widgets: the "
        "guider replaces model/positive/negative/cfg, the SIGMAS replace steps/scheduler/denoise, the SAMPLER "
        "replaces sampler_name. Flow models (SD3, FLUX) work like any other.",
        "Knobs: candidates N (8 here; the paper's FLUX.1-dev runs used up to 2880 NFEs), top_k, the guider's cfg "
        "(SD3.5 medium: ~4.5), the scheduler's steps (~28, sgm_uniform). The `noise` output replays the winner "
        "exactly in a stock SamplerCustomAdvanced.",
        "Model: " + SD35M + " (Comfy-Org's single file with CLIP-L/G and T5). " + CLIP_NOTE,
        SEED_NOTE]), size=(340, 640), markdown=True)
    g.dump("sd3_guider_search.json")


def composable_random_search():
    g = Graph()
    prompt = "a watercolor painting of a lighthouse in a storm"
    ckpt = checkpoint(g, SD15)
    pos, neg = text_encoders(g, ckpt, prompt, "blurry, low quality")
    count = 8
    lat = empty_latent(g, 512, batch=count)
    ver = clipscore(g, (X[3], 660))
    noise = g.node(P + "NoiseCandidateGenerator", (X[1], 480), [0, "randomize", count, 0],
                   outputs=[("noise", "NOISE")], size=(340, 130))
    guider = g.node("CFGGuider", (X[2], 0), [7.0], inputs=[("model", "MODEL"), ("positive", "CONDITIONING"),
                                                            ("negative", "CONDITIONING")],
                    outputs=[("GUIDER", "GUIDER")], size=(320, 100))
    g.link((ckpt, "MODEL"), guider, "model")
    g.link((pos, 0), guider, "positive")
    g.link((neg, 0), guider, "negative")
    sampler = g.node("KSamplerSelect", (X[2], 140), ["euler"], outputs=[("SAMPLER", "SAMPLER")], size=(320, 60))
    sched = g.node("BasicScheduler", (X[2], 240), ["normal", 20, 1.0], inputs=[("model", "MODEL")],
                   outputs=[("SIGMAS", "SIGMAS")], size=(320, 110))
    g.link((ckpt, "MODEL"), sched, "model")
    sca = g.node("SamplerCustomAdvanced", (X[2], 390),
                 inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                         ("latent_image", "LATENT")],
                 outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(320, 130))
    for src, name in ((noise, "noise"), (guider, "guider"), (sampler, "sampler"), (sched, "sigmas"),
                      (lat, "latent_image")):
        g.link((src, 0), sca, name)
    dec = g.node("VAEDecode", (X[3], 0), [], inputs=[("samples", "LATENT"), ("vae", "VAE")],
                 outputs=[("IMAGE", "IMAGE")], size=(240, 50))
    g.link((sca, "output"), dec, "samples")
    g.link((ckpt, "VAE"), dec, "vae")
    score = g.node(P + "VerifierScore", (X[3], 100), [prompt],
                   inputs=[("images", "IMAGE"), ("verifier", "INFSCALE_VERIFIER"), ("noise", "NOISE")],
                   outputs=[("scores", "INFSCALE_SCORES")], size=(340, 150))
    g.link((dec, 0), score, "images")
    g.link((ver, 0), score, "verifier")
    g.link((noise, 0), score, "noise")
    pick = g.node(P + "BestPick", (X[3], 400), [2],
                  inputs=[("images", "IMAGE"), ("scores", "INFSCALE_SCORES"), ("latent", "LATENT"),
                          ("noise", "NOISE")],
                  outputs=[("best_image", "IMAGE"), ("best_latent", "LATENT"), ("top_k_images", "IMAGE"),
                           ("best_index", "INT"), ("best_seed", "INT")], size=(340, 190))
    g.link((dec, 0), pick, "images")
    g.link((score, 0), pick, "scores")
    g.link((sca, "output"), pick, "latent")
    g.link((noise, 0), pick, "noise")
    save = g.node(P + "SaveSearchImage", (X[4], 0), ["composable_winner"],
                  inputs=[("images", "IMAGE"), ("scores", "INFSCALE_SCORES")], size=(380, 380))
    g.link((pick, "best_image"), save, "images")
    g.link((score, 0), save, "scores")
    grid = g.node(P + "RankedGrid", (X[4], 420), [4], inputs=[("images", "IMAGE"), ("scores", "INFSCALE_SCORES")],
                  outputs=[("grid", "IMAGE")], size=(300, 80))
    g.link((dec, 0), grid, "images")
    g.link((score, 0), grid, "scores")
    prev = g.node("PreviewImage", (X[4], 540), [], inputs=[("images", "IMAGE")], size=(380, 320),
                  title="All candidates, ranked")
    g.link((grid, 0), prev, "images")
    g.note((X[0], 160), "\n\n".join([
        "## Composable random search (current ComfyUI)",
        "Random search built from stock nodes: **Noise Candidate Generator** -> SamplerCustomAdvanced -> VAE "
        "Decode -> **Verifier Score** -> **Best Pick**. It picks the same winner as Search Loop with the same "
        "seed (tested).",
        "Knobs: `count` = N candidates, sampled as ONE batch (VRAM grows with N) - the Empty Latent's batch_size "
        "must be 1 or equal `count`; `offset` splits one search over several samplers (offset 0 and 8 with "
        "count 8 = candidates 0-15). Best Pick `top_k` (<= count) returns the best k. Candidate i has seed "
        "seed + offset + i, the same starting noise Search Loop and a batch-1 KSampler use, so `best_seed` in a "
        "RandomNoise replays the winner at batch 1.",
        "Paper default: random search is the paper's simplest and, on FLUX, strongest algorithm; budgets up "
        "to 2880 NFEs. " + CLIP_NOTE]), size=(340, 600), markdown=True)
    g.dump("composable_random_search.json")


def img2img_search():
    g = Graph()
    prompt = "a detailed oil painting of a harbour town at dusk"
    ckpt = checkpoint(g, SD15)
    pos, neg = text_encoders(g, ckpt, prompt, "blurry, low quality")
    img = g.node("LoadImage", (X[0], 820), ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                 size=(340, 320))
    enc = g.node("VAEEncode", (X[1], 330), [], inputs=[("pixels", "IMAGE"), ("vae", "VAE")],
                 outputs=[("LATENT", "LATENT")], size=(240, 50))
    g.link((img, "IMAGE"), enc, "pixels")
    g.link((ckpt, "VAE"), enc, "vae")
    ver = clipscore(g)
    search = search_loop(g, prompt, candidates=12, top_k=3, steps=25, denoise=0.6)
    wire_search(g, search, ckpt, pos, neg, enc, ver)
    save_with_report(g, search, "img2img_search")
    ranked_grid(g, search, columns=3)
    g.note((X[0], 160), "\n\n".join([
        "IMAGE-TO-IMAGE SEARCH.",
        "Load an image, encode it with the checkpoint's VAE and give Search Loop `denoise` < 1: each candidate "
        "is a different noise added to the same image, denoised from part-way down the schedule, then scored. "
        "Set Latent Noise Mask on the encoded latent turns it into inpainting search (the unmasked area stays "
        "unchanged). Every strategy works with img2img.",
        "Knobs: denoise (0.6 here: lower = closer to the input image, less room for the search to help); "
        "candidates N (12 here); top_k; steps counts the full schedule, so a candidate costs about "
        "steps x denoise NFEs. The input image's size sets the output size (multiples of 8).",
        "Paper: Ma et al. 2025 search text-to-image; img2img is the same random search over the noise added to "
        "the image. " + CLIP_NOTE, SEED_NOTE]), size=(340, 620))
    g.dump("img2img_search.json")


def strategy_workflow(name, strategy_type, widgets, inputs_sizes, note, sampler="euler", candidates=8, steps=20,
                      coarse=None, primitive_prompt=False, reroute_vae=False):
    g = Graph()
    prompt = "a macro photo of a dew-covered spider web at sunrise"
    ckpt = checkpoint(g, SD15)
    pos, neg = text_encoders(g, ckpt, prompt, "blurry, low quality")
    lat = empty_latent(g, 512)
    ver = clipscore(g)
    strat = g.node(P + strategy_type, (X[1], 650), widgets, outputs=[("strategy", "INFSCALE_STRATEGY")],
                   size=inputs_sizes)
    last = strat
    if coarse is not None:
        c2f = g.node(P + "CoarseToFine", (X[1], 650 + inputs_sizes[1] + 40), list(coarse),
                     inputs=[("strategy", "INFSCALE_STRATEGY")], outputs=[("strategy", "INFSCALE_STRATEGY")],
                     size=(340, 110))
        g.link((strat, 0), c2f, "strategy")
        last = c2f
    search = search_loop(g, prompt, candidates=candidates, top_k=1, sampler=sampler, steps=steps)
    vae = None
    if reroute_vae:
        rr = g.node("Reroute", (X[2] - 30, 820), [], inputs=[("", "*")], outputs=[("", "VAE")], size=(75, 26))
        g.nodes[rr - 1]["properties"] = {"showOutputText": False, "horizontal": False}
        g.link((ckpt, "VAE"), rr, "")
        vae = (rr, 0)
    wire_search(g, search, ckpt, pos, neg, lat, ver, vae=vae)
    g.link((last, 0), search, "strategy")
    if primitive_prompt:  # one prompt for the text encoder and the verifier
        prim = g.node("PrimitiveNode", (X[0], -200), [prompt], outputs=[("STRING", "STRING")], size=(340, 140),
                      title="Prompt")
        g.nodes[prim - 1]["outputs"][0]["widget"] = {"name": "text"}
        g.nodes[prim - 1]["properties"] = {"Run widget replace on values": False}
        g.widget_input(pos, "text", "STRING")
        g.widget_input(search, "prompt", "STRING")
        g.link((prim, 0), pos, "text")
        g.link((prim, 0), search, "prompt")
    save_with_report(g, search, name)
    score_plot(g, (search, "scores"))
    g.note((X[0], 160), note, size=(340, 620))
    g.dump(name + ".json")


def zero_order_search():
    strategy_workflow("zero_order_search", "ZeroOrderStrategy", strategy_widgets("zero_order"), (340, 180),
                      "\n\n".join([
        "ZERO-ORDER SEARCH (ZO-N), Ma et al. 2025.",
        "The first pivot is the best of a few random noises (start_noises); then N neighbours on the sphere "
        "around the pivot (same norm, cosine t to it). Each round scores the neighbours; the best becomes the new "
        "pivot only if it beats the current one, otherwise the pivot stays, fresh neighbours are drawn and the "
        "step grows (step_growth). Rounds continue until the NFE budget is spent.",
        "Knobs at the pack's defaults, chosen on two benchmark models (bench/README.md): neighbours N = 4, "
        "cosine t = 0.66 (LARGER t = SMALLER step; the paper's tt-scale-flux uses N = 2, t = 0.95); budget_nfe "
        "0 = Search Loop's candidates x steps (here 8 x 20 = 160 NFEs, the cost of random search over 8 noises).",
        "Score vs NFE Plot draws the best score so far against NFEs spent: connect a second search's scores to "
        "scores_2 to compare strategies at equal budget. Zero-order winners are noises, not seeds: feed the "
        "`noise` output to SamplerCustomAdvanced to replay one.", CLIP_NOTE]))


def paths_search():
    strategy_workflow("paths_search", "PathsStrategy", strategy_widgets("paths"), (340, 210), "\n\n".join([
        "SEARCH OVER PATHS (Paths-N), Ma et al. 2025.",
        "N noises are denoised to the start level; then, repeatedly, each path is re-noised M times forward by "
        "delta_f and denoised back by delta_b (> delta_f, so every round makes progress), the x0-predictions are "
        "scored and the best N paths kept, until the schedule ends.",
        "Knobs at the pack's defaults, chosen on two benchmark models (bench/README.md): paths N = 0 (as many as "
        "the budget holds), noises_per_path M = 2, start_level 0.6, forward 0.2, backward 0.4. Levels are "
        "fractions of your schedule's noise span (1 = its start, 0 = clean), so a short schedule still has room "
        "for search rounds (the paper's 0.11 / 0.78 / 0.81 assume 30+ steps). With paths 0, a budget under "
        "min_generations (4) generations runs random search's candidates instead: paths measured below random "
        "search there. budget_nfe 0 = candidates x steps.",
        "Needs a single-step sampler (euler, euler_ancestral, heun, dpm_2, dpmpp_sde, ddim, lcm ...): multistep "
        "samplers (dpmpp_2m, uni_pc ...) are refused, since a restart would drop their history.", CLIP_NOTE]),
        sampler="euler", reroute_vae=True)


def particle_search():
    strategy_workflow("particle_search", "ParticleStrategy", strategy_widgets("particles", particles=4), (340, 210),
                      "\n\n".join([
        "PARTICLE RESAMPLING (FK steering, Singhal et al. 2025).",
        "k particles are sampled together with a stochastic sampler; every `interval` steps the x0-prediction "
        "of the state each particle has reached is scored (one extra NFE per particle) and the particles are "
        "resampled by their potentials, so compute moves to promising ones.",
        "Knobs at the pack's defaults (bench/README.md): particles k (4 here; 0 = as many as the budget holds); "
        "potential max / difference / sum / current; lam = temperature lambda (2, in units of the particles' "
        "spread; 0 = no selection, larger = greedier); interval (5 steps); ess_threshold (0 = resample at every "
        "scoring step; FK steering's 0.5 = only when the effective sample size falls below k/2); budget_nfe 0 = "
        "candidates x steps.",
        "Needs a stochastic sampler (euler_ancestral here, or dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde, "
        "lcm, ddpm): copies of one particle must diverge.", CLIP_NOTE]),
        sampler="euler_ancestral", candidates=4)


def coarse_to_fine_search():
    strategy_workflow("coarse_to_fine_search", "ZeroOrderStrategy", strategy_widgets("zero_order"), (340, 180),
                      "\n\n".join([
        "COARSE TO FINE (zero-order search at few steps, finalists at full steps).",
        "Coarse to Fine wraps a noise-level strategy (random, zero-order or evolution; none connected = random "
        "search): the search runs at `coarse_steps` per candidate, then the best `finalists` are re-rendered at "
        "Search Loop's full step count, scored again and ranked. Fewer NFEs per candidate is the main lever "
        "where batching buys nothing (FLUX-size models).",
        "Knobs: coarse_steps (8) and finalists (4), the pack's defaults; the inner Zero-Order node is at its "
        "defaults too. The budget (budget_nfe 0 = candidates x full steps) covers both the coarse search and the "
        "re-renders.",
        "The Prompt node (a primitive) feeds both the text encoder and Search Loop's verifier prompt, so they "
        "cannot drift apart.", CLIP_NOTE]),
        candidates=16, coarse=(8, 4), primitive_prompt=True)


def video_outputs(g, search, prefix, fps):
    """The winner as an animated WEBP, the top k's scored frames on a Video Contact Sheet, the score plot."""
    webp = g.node("SaveAnimatedWEBP", (X[3], 0), [prefix, float(fps), False, 90, "default"],
                  inputs=[("images", "IMAGE")], size=(380, 420), title=f"The winner ({fps} fps)")
    g.link((search, "image"), webp, "images")
    sheet = g.node(P + "VideoContactSheet", (X[3], 460), [], inputs=[("images", "IMAGE"),
                                                                      ("scores", "INFSCALE_SCORES")],
                   outputs=[("contact_sheet", "IMAGE")], size=(300, 60))
    g.link((search, "top_k_images"), sheet, "images")
    g.link((search, "scores"), sheet, "scores")
    prev = g.node("PreviewImage", (X[3], 560), [], inputs=[("images", "IMAGE")], size=(380, 320),
                  title="Top k: the frames scored, ranked")
    g.link((sheet, 0), prev, "images")
    score_plot(g, (search, "scores"))


VIDEO_SCORING_NOTE = (
    "Scoring: an image verifier scores a few decoded frames of each candidate (**Video Scoring**: first / "
    "middle / last, or k evenly spaced) and the candidate's score is their mean or min (a video is as good "
    "as its worst frame). Without the Video Scoring node: first/middle/last, mean. Wan's VAE decodes only the "
    "latent frames the scored frames need ('first' decodes one); preview_keep below 1 scores each candidate "
    "on its latent preview first and decodes only the best fraction.")
VIDEO_OUTPUTS_NOTE = (
    "Outputs: `image` is the winner's frames (Save Animated WEBP here; Create Video + Save Video work too), "
    "`top_k_images` the top-k videos' frames, video after video; **Video Contact Sheet** shows one row per "
    "candidate with the frames its score came from, captioned rank · score · seed.")
WAN22_PROMPT = ("a paper boat drifting down a rain-soaked street at dusk, neon reflections in the puddles, "
                "low tracking shot")
WAN_NEGATIVE = "static, blurry, low quality, deformed, watermark, text"


def wan21_t2v_search():
    g = Graph()
    prompt = "a red fox running through fresh snow in a pine forest, tracking shot, soft morning light"
    unet = g.node("UNETLoader", (X[0], 0), [WAN21, "default"], outputs=[("MODEL", "MODEL")], size=(340, 90))
    te = g.node("CLIPLoader", (X[0], 130), [WAN_TE, "wan", "default"], outputs=[("CLIP", "CLIP")], size=(340, 110))
    vae = g.node("VAELoader", (X[0], 280), [WAN_VAE], outputs=[("VAE", "VAE")], size=(340, 60))
    pos, neg = text_encoders(g, te, prompt, "static, blurry, low quality, deformed, watermark, text")
    lat = g.node("EmptyHunyuanLatentVideo", (X[1], 330), [832, 480, 33, 1], outputs=[("LATENT", "LATENT")],
                 size=(340, 130), title="Video size and length")
    ver = clipscore(g, pos=(X[1], 500))
    scoring = video_scoring(g, (X[1], 670))
    search = search_loop(g, prompt, candidates=4, top_k=2, sampler="uni_pc", scheduler="simple", steps=30, cfg=6.0,
                         extra_inputs=[("video_scoring", "INFSCALE_VIDEO_SCORING")])
    wire_video_search(g, search, unet, pos, neg, lat, vae, ver, scoring)
    video_outputs(g, search, "wan_search", 16)
    g.note((X[0], 380), "\n\n".join([
        "## Wan 2.1 text-to-video: search over video noises",
        "Search Loop takes the 5-D video latent (Empty Hunyuan Latent Video: Wan 2.1 uses the same 16-channel "
        "latent) and samples N candidate videos with ComfyUI's own sampler. Candidate i's starting noise is "
        "exactly what a stock KSampler draws for seed `seed + i`, so `best_seed` in a KSampler with these settings "
        "(uni_pc, simple, 30 steps, cfg 6) gives the winning video bit for bit.",
        VIDEO_SCORING_NOTE,
        VIDEO_OUTPUTS_NOTE,
        "Cost: each candidate is a whole video (33 frames at 832×480 here): N = 4 costs four generations plus "
        "the decodes. Exact re-render (exact_winner) re-samples the top_k finalists at batch 1; switch it off to "
        "return the search's own samples.",
        f"Files: `{WAN21}` in models/diffusion_models, `{WAN_TE}` in models/text_encoders, `{WAN_VAE}` in "
        "models/vae (Comfy-Org's repackaged Wan 2.1). " + CLIP_NOTE,
        SEED_NOTE]), size=(340, 700), markdown=True)
    g.dump("wan21_t2v_search.json")


def ltxv_i2v_search():
    g = Graph()
    prompt = ("a paper boat drifts across a puddle after rain, ripples spreading, reflections of trees, "
              "slow camera push-in")
    ckpt = checkpoint(g, LTXV)
    te = g.node("CLIPLoader", (X[0], 140), [LTXV_TE, "ltxv", "default"], outputs=[("CLIP", "CLIP")],
                size=(340, 110))
    image = g.node("LoadImage", (X[0], 290), ["example.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
                   size=(340, 320), title="Start image (the first frame)")
    pos, neg = text_encoders(g, te, prompt, "low quality, worst quality, deformed, distorted, watermark, static")
    i2v = g.node("LTXVImgToVideo", (X[1], 330), [768, 512, 97, 1, 1.0],
                 inputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                         ("image", "IMAGE")],
                 outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                 size=(340, 240), title="LTXV Img To Video: size, length, keyframe strength")
    g.link((pos, 0), i2v, "positive")
    g.link((neg, 0), i2v, "negative")
    g.link((ckpt, "VAE"), i2v, "vae")
    prep = g.node("LTXVPreprocess", (X[0], 650), [40], inputs=[("image", "IMAGE")],
                  outputs=[("output_image", "IMAGE")], size=(340, 80))
    g.link((image, "IMAGE"), prep, "image")
    g.link((prep, 0), i2v, "image")
    cond = g.node("LTXVConditioning", (X[1], 610), [25.0], inputs=[("positive", "CONDITIONING"),
                                                                   ("negative", "CONDITIONING")],
                  outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")], size=(340, 80))
    g.link((i2v, "positive"), cond, "positive")
    g.link((i2v, "negative"), cond, "negative")
    sched = g.node("LTXVScheduler", (X[1], 730), [30, 2.05, 0.95, True, 0.1], inputs=[("latent", "LATENT")],
                   outputs=[("SIGMAS", "SIGMAS")], size=(340, 180))
    g.link((i2v, "latent"), sched, "latent")
    sampler = g.node("KSamplerSelect", (X[1], 950), ["euler"], outputs=[("SAMPLER", "SAMPLER")], size=(340, 60))
    ver = clipscore(g, pos=(X[2], 920))  # below Search Loop's room to grow
    scoring = video_scoring(g, (X[2], 1090), ("evenly spaced", 4, "mean", 1.0, 2), size=(340, 110))
    search = search_loop(g, prompt, candidates=4, top_k=2, sampler="euler", scheduler="simple", steps=30, cfg=3.0,
                         extra_inputs=[("video_scoring", "INFSCALE_VIDEO_SCORING")])
    g.link((ckpt, "MODEL"), search, "model")
    g.link((cond, "positive"), search, "positive")
    g.link((cond, "negative"), search, "negative")
    g.link((i2v, "latent"), search, "latent")
    g.link((ckpt, "VAE"), search, "vae")
    g.link((ver, 0), search, "verifier")
    g.link((sampler, 0), search, "sampler")
    g.link((sched, 0), search, "sigmas")
    g.link((scoring, 0), search, "video_scoring")
    video_outputs(g, search, "ltxv_search", 25)
    g.note((X[0], 770), "\n\n".join([
        "## LTX-Video image-to-video: search over video noises from one start image",
        "**LTXV Preprocess** gives the start image the light compression LTX-Video was trained with; "
        "**LTXV Img To Video** encodes the start image into the first latent frame and marks it with a "
        "per-frame noise mask (strength 1: that frame is kept as it is). Search Loop passes the mask to "
        "ComfyUI's sampler exactly as a stock sampler does, so every candidate starts from the same image and "
        "only the rest of the video differs. **LTXV Conditioning** (frame rate) and **LTXV Scheduler**'s "
        "sigmas (its shift follows the latent's size) reach the sampler unchanged.",
        "Candidate i's starting noise is exactly what a stock sampler draws for seed `seed + i`: `best_seed` as "
        "SamplerCustom's noise_seed (add_noise on, cfg 3, the same KSampler Select and LTXV Scheduler) gives "
        "the winning video bit for bit. Search Loop's own sampler_name / scheduler / steps widgets are unused "
        "while SAMPLER and SIGMAS are connected.",
        "Scoring: the verifier scores 4 evenly spaced decoded frames of each candidate (**Video Scoring**) and "
        "takes their mean; the first frame is the start image in every candidate, so min would mostly compare "
        "the others. **Video Contact Sheet** shows the ranked candidates with the frames their scores came from.",
        "Cost: each candidate is a whole video (97 frames at 768×512 here); N = 4 costs four generations plus "
        "the decodes. Exact re-render (exact_winner) re-samples the top_k finalists at batch 1; switch it off "
        "to return the search's own samples.",
        f"Files: `{LTXV}` in models/checkpoints (model and VAE; its CLIP output is empty), `{LTXV_TE}` in "
        "models/text_encoders (CLIPLoader type ltxv), the start image in ComfyUI's input folder. " + CLIP_NOTE,
        SEED_NOTE]), size=(340, 760), markdown=True)
    g.dump("ltxv_i2v_search.json")


def wan22_5b_t2v_search():
    """ComfyUI's Wan 2.2 5B template (ModelSamplingSD3 shift 8, uni_pc, simple, 20 steps, cfg 5, 1280x704,
    121 frames, 24 fps) with Search Loop in place of its KSampler."""
    g = Graph()
    unet = g.node("UNETLoader", (X[0], -260), [WAN22_5B, "default"], outputs=[("MODEL", "MODEL")], size=(340, 90))
    shift = g.node("ModelSamplingSD3", (X[0], -130), [8.0], inputs=[("model", "MODEL")],
                   outputs=[("MODEL", "MODEL")], size=(340, 60))
    g.link((unet, "MODEL"), shift, "model")
    te = g.node("CLIPLoader", (X[0], 130), [WAN_TE, "wan", "default"], outputs=[("CLIP", "CLIP")], size=(340, 110))
    vae = g.node("VAELoader", (X[0], 280), [WAN22_VAE], outputs=[("VAE", "VAE")], size=(340, 60))
    pos, neg = text_encoders(g, te, WAN22_PROMPT, WAN_NEGATIVE)
    lat = g.node("Wan22ImageToVideoLatent", (X[1], 330), [1280, 704, 121, 1],
                 inputs=[("vae", "VAE"), ("start_image", "IMAGE")], outputs=[("LATENT", "LATENT")],
                 size=(340, 170), title="Video size and length")
    g.link((vae, "VAE"), lat, "vae")
    ver = clipscore(g, pos=(X[1], 580))
    scoring = video_scoring(g, (X[1], 750))
    search = search_loop(g, WAN22_PROMPT, candidates=4, top_k=2, sampler="uni_pc", scheduler="simple", steps=20,
                         cfg=5.0, extra_inputs=[("video_scoring", "INFSCALE_VIDEO_SCORING")])
    wire_video_search(g, search, shift, pos, neg, lat, vae, ver, scoring)
    video_outputs(g, search, "wan22_search", 24)
    g.note((X[0], 380), "\n\n".join([
        "## Wan 2.2 5B text-to-video: search over video noises",
        "The settings of ComfyUI's Wan 2.2 5B template (ModelSamplingSD3 shift 8, uni_pc, simple, 20 steps, "
        "cfg 5, 1280×704, 121 frames at 24 fps), with Search Loop in place of the KSampler. Wan 2.2 5B has its "
        "own 48-channel latent (16× spatial compression): make it with **Wan22 Image To Video Latent** (its "
        "batch size stays 1; Search Loop makes the candidates). Candidate i's starting noise is exactly what a "
        "stock KSampler draws for seed `seed + i`, so `best_seed` in the template's KSampler gives the winning "
        "video bit for bit.",
        VIDEO_SCORING_NOTE,
        VIDEO_OUTPUTS_NOTE,
        "Cost: each candidate is a whole 121-frame 720p-class video plus its decode (the Wan 2.2 VAE is large): "
        "N = 4 costs four generations. Exact re-render (exact_winner) re-samples the top_k finalists at batch 1; "
        "switch it off to return the search's own samples. Start with a short length (e.g. 41 frames) and a "
        "small N to try prompts.",
        "Image-to-video: connect a start image to Wan22 Image To Video Latent's start_image. It is put in the "
        "first latent frame with a noise mask; Search Loop hands the mask to the sampler as a stock KSampler "
        "does, so every candidate keeps the start frame and best_seed replays the winner.",
        f"Files: `{WAN22_5B}` in models/diffusion_models, `{WAN_TE}` in models/text_encoders, `{WAN22_VAE}` in "
        "models/vae (Comfy-Org's repackaged Wan 2.2). " + CLIP_NOTE,
        SEED_NOTE]), size=(340, 700), markdown=True)
    g.dump("wan22_5b_t2v_search.json")


def wan22_14b_t2v_search():
    """ComfyUI's Wan 2.2 14B template (its full-step version: each expert through ModelSamplingSD3 shift 8,
    euler, simple, 20 steps switching at 10, cfg 3.5, 640x640, 81 frames) with one Search Loop in place of its
    two KSamplerAdvanced: model (high noise), model_2 (low noise) and switch_step."""
    g = Graph()
    high = g.node("UNETLoader", (X[0], -600), [WAN22_HIGH, "default"], outputs=[("MODEL", "MODEL")],
                  size=(340, 90), title="High-noise expert")
    high_shift = g.node("ModelSamplingSD3", (X[0], -450), [8.0], inputs=[("model", "MODEL")],
                        outputs=[("MODEL", "MODEL")], size=(340, 60))
    g.link((high, "MODEL"), high_shift, "model")
    low = g.node("UNETLoader", (X[0], -330), [WAN22_LOW, "default"], outputs=[("MODEL", "MODEL")],
                 size=(340, 90), title="Low-noise expert")
    low_shift = g.node("ModelSamplingSD3", (X[0], -180), [8.0], inputs=[("model", "MODEL")],
                       outputs=[("MODEL", "MODEL")], size=(340, 60))
    g.link((low, "MODEL"), low_shift, "model")
    te = g.node("CLIPLoader", (X[0], 130), [WAN_TE, "wan", "default"], outputs=[("CLIP", "CLIP")], size=(340, 110))
    vae = g.node("VAELoader", (X[0], 280), [WAN_VAE], outputs=[("VAE", "VAE")], size=(340, 60))
    pos, neg = text_encoders(g, te, WAN22_PROMPT, WAN_NEGATIVE)
    lat = g.node("EmptyHunyuanLatentVideo", (X[1], 330), [640, 640, 81, 1], outputs=[("LATENT", "LATENT")],
                 size=(340, 130), title="Video size and length")
    ver = clipscore(g, pos=(X[1], 500))
    scoring = video_scoring(g, (X[1], 670))
    search = search_loop(g, WAN22_PROMPT, candidates=4, top_k=2, sampler="euler", scheduler="simple", steps=20,
                         cfg=3.5, extra_inputs=[("video_scoring", "INFSCALE_VIDEO_SCORING"), ("model_2", "MODEL")])
    g.nodes[search - 1]["widgets_values"].append(10)  # switch_step: the first KSamplerAdvanced's end_at_step
    g.nodes[search - 1]["size"] = [380, 640]
    wire_video_search(g, search, high_shift, pos, neg, lat, vae, ver, scoring)
    g.link((low_shift, "MODEL"), search, "model_2")
    video_outputs(g, search, "wan22_14b_search", 16)
    g.note((X[0], 380), "\n\n".join([
        "## Wan 2.2 14B text-to-video: search with two experts",
        "Wan 2.2 14B samples with two models: a high-noise expert for the first steps and a low-noise expert for "
        "the rest. ComfyUI's template chains two KSamplerAdvanced (the first with add_noise on, steps 0 to 10 of "
        "20, returning with leftover noise; the second from step 10 on, adding none). Search Loop does the same "
        "in one node: `model` is the high-noise expert, `model_2` the low-noise one, and `switch_step` the step "
        "where it switches (the first KSamplerAdvanced's end_at_step). Settings as the template's (not the "
        "4-step LoRA version): ModelSamplingSD3 shift 8 on each expert, euler, simple, 20 steps, cfg 3.5, "
        "640×640, 81 frames.",
        "Candidate i's starting noise is exactly what the first KSamplerAdvanced draws for noise_seed `seed + i`, "
        "so `best_seed` as its noise_seed in the template's two-sampler chain gives the winning video bit for "
        "bit. Every strategy runs across the switch (a strategy that stops and re-noises picks the expert of the "
        "step it resumes at).",
        VIDEO_SCORING_NOTE,
        VIDEO_OUTPUTS_NOTE,
        "Cost: each candidate is a whole 81-frame video through both experts; N = 4 costs four generations plus "
        "the decodes. Exact re-render (exact_winner) re-samples the top_k finalists at batch 1; switch it off to "
        "return the search's own samples.",
        f"Files: `{WAN22_HIGH}` and `{WAN22_LOW}` in models/diffusion_models, `{WAN_TE}` in models/text_encoders, "
        f"`{WAN_VAE}` in models/vae (Wan 2.2 14B uses the Wan 2.1 VAE; Comfy-Org's repackaged files). "
        + CLIP_NOTE,
        "The seed widget is set to *randomize*: with *increment* the next run would re-score N - 1 of this run's "
        "candidates."]), size=(340, 700), markdown=True)
    g.dump("wan22_14b_t2v_search.json")


ALL = [sd15_random_search, sdxl_ensemble_search, sd3_guider_search, composable_random_search, img2img_search,
       zero_order_search, paths_search, particle_search, coarse_to_fine_search, wan21_t2v_search,
       ltxv_i2v_search, wan22_5b_t2v_search, wan22_14b_t2v_search]


if __name__ == "__main__":
    for make in ALL:
        make()
    print("wrote", len(ALL), "workflows to", OUT)
