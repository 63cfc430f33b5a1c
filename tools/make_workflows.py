"""Writes the example workflows in workflows/ (ComfyUI's UI format).

Run after changing a node's inputs: `python tools/make_workflows.py`.  Each
workflow is a list of nodes with their links; the test suite converts and
executes every file on a real server."""
from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "workflows")


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, pos, widgets=(), inputs=(), outputs=(), size=(320, 120)):
        nid = len(self.nodes) + 1
        self.nodes.append({"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
                           "order": nid - 1, "mode": 0,
                           "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                           "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                                       for i, (n, t) in enumerate(outputs)],
                           "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)})
        return nid

    def link(self, src, src_slot, dst, dst_input):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = [i["name"] for i in d["inputs"]].index(dst_input)
        typ = s["outputs"][src_slot]["type"]
        d["inputs"][slot]["link"] = lid
        s["outputs"][src_slot]["links"].append(lid)
        self.links.append([lid, src, src_slot, dst, slot, typ])

    def dump(self, name):
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")


def sd15_random_search():
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), ["v1-5-pruned-emaonly.safetensors"],
                  outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    prompt = "a photo of a red fox in the snow, golden hour"
    pos = g.node("CLIPTextEncode", (360, 0), [prompt], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    neg = g.node("CLIPTextEncode", (360, 180), ["blurry, low quality"], inputs=[("clip", "CLIP")],
                 outputs=[("CONDITIONING", "CONDITIONING")])
    lat = g.node("EmptyLatentImage", (360, 360), [512, 512, 1], outputs=[("LATENT", "LATENT")])
    ver = g.node("InfScale_CLIPScoreVerifierLoader", (360, 520),
                 ["ViT-L-14", "open_clip_model.safetensors", "clipscore"], outputs=[("verifier", "INFSCALE_VERIFIER")])
    search = g.node("InfScale_SearchLoop", (740, 0),
                    [prompt, 0, "randomize", 16, 4, "euler", "normal", 20, 7.0, 1.0, 0],
                    inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                            ("latent", "LATENT"), ("vae", "VAE"), ("verifier", "INFSCALE_VERIFIER"),
                            ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("strategy", "INFSCALE_STRATEGY"),
                            ("guider", "GUIDER")],
                    outputs=[("image", "IMAGE"), ("latent", "LATENT"), ("top_k_images", "IMAGE"),
                             ("scores", "INFSCALE_SCORES"), ("winner_noise", "LATENT"), ("best_seed", "INT"),
                             ("noise", "NOISE")], size=(360, 420))
    save = g.node("SaveImage", (1140, 0), ["infscale_winner"], inputs=[("images", "IMAGE")], size=(320, 320))
    topk = g.node("PreviewImage", (1140, 360), [], inputs=[("images", "IMAGE")], size=(320, 320))
    js = g.node("InfScale_ScoresToJSON", (1140, 720), [], inputs=[("scores", "INFSCALE_SCORES")],
                outputs=[("json", "STRING")])
    g.node("Note", (0, 300), [
        "Random search (best of N), Ma et al. 2025: SearchLoop samples `candidates` starting noises "
        "(seeds seed ... seed+N-1) with this model and sampler, scores each decoded image with the verifier "
        "against `prompt`, and re-renders the top_k at batch 1 exactly as a stock KSampler would: best_seed in "
        "a KSampler gives the winner's image. N is the budget (N generations' worth of NFEs); the paper's "
        "text-to-image runs use N up to 2880 NFEs / 30 steps = 96. The seed widget defaults to randomize: "
        "'increment' would re-score N-1 old candidates. Put CLIP ViT-L/14 weights "
        "(open_clip_model.safetensors from timm/vit_large_patch14_clip_224.openai) in models/verifiers."],
        size=(320, 220))
    for s, ss, d, di in [(ckpt, 1, pos, "clip"), (ckpt, 1, neg, "clip"), (ckpt, 0, search, "model"),
                         (pos, 0, search, "positive"), (neg, 0, search, "negative"), (lat, 0, search, "latent"),
                         (ckpt, 2, search, "vae"), (ver, 0, search, "verifier"), (search, 0, save, "images"),
                         (search, 2, topk, "images"), (search, 3, js, "scores")]:
        g.link(s, ss, d, di)
    g.dump("sd15_random_search.json")


if __name__ == "__main__":
    sd15_random_search()
    print("wrote", OUT)
