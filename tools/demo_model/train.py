"""Trains the demo model from nothing: VAE, UNet, verifier and judge, on captioned procedural shapes.

    python tools/demo_model/train.py --out DIR [--device cuda] [--quick]

Writes the trained parts (``DIR/weights/``: unet, taesd, verifier, judge
safetensors and provenance.json, a few MB together) and ``DIR/samples.png``;
``tools/demo_model/weights/`` holds the committed copy, and
``tools/demo_model/build.py`` assembles the files ComfyUI loads from it.

What trains are the trained parts of ComfyUI's SD1.5 UNet and TAESD as
networks of their own (``nets.NarrowUNet``, ``nets.narrow_taesd``: the same
arithmetic on the trained channels only; ``build.py check-nets`` compares them
with ComfyUI's classes), so no ComfyUI is needed here, only torch and
open_clip.  Everything is seeded: the data are drawn from fixed seed streams
(``shapes_data.make_batch``), every network starts from a fixed seed, and GPU
kernels are set to deterministic ones, so a rerun on the same machine and
software gives the same weights.

Stages (``--quick``: 3 steps each, batches of 16, a smoke run of the script):

1. **VAE** (TAESD): autoencoder on stream A images, MSE plus a penalty keeping
   each latent channel near mean 0, std 1 (what SD's schedule expects); the
   decoder also sees slightly noised latents.
2. **Verifier**: open_clip, contrastive on stream A images (half of them
   through the VAE with noised latents, as generated images look): each image
   against all 216 captions, each caption against the batch's images.
3. **Judge**: the CNN on stream B (other images), clean and through the VAE.
4. **Text contexts**: what the checkpoint's frozen CLIP-L gives for the 216
   captions and the empty prompt. Its layers' output projections are zero
   (nets.CLIP_ZERO), so its context is the final LayerNorm of token plus
   position embedding (the tokens are ComfyUI's SD1 tokenizer's, from
   ``caption_tokens.json``); ``build.py check-text`` compares it with ComfyUI's
   CLIPTextEncode.
5. **UNet**: epsilon prediction on SD1.5's discrete schedule (scaled-linear
   betas 0.00085..0.012, 1000 steps), uniform timesteps, 10 % empty captions
   (for CFG), EMA weights; stream A images through the trained VAE encoder.
   The EMA weights at half the steps are kept too: ``--ship-unet`` says
   which of the two becomes ``unet.safetensors`` (the other is written as
   ``unet_other.safetensors``, for comparison; it is not committed). The
   committed model ships the half-trained one (the default): the fully trained
   one gets one sample right so often that search has little to show.
6. **Check**: samples with ComfyUI's KSampler arithmetic (euler, normal
   scheduler): the judge's accuracy of one sample, of the verifier's best of
   8, and of the best of 8 in hindsight, for a few steps/CFG settings.

On one GPU the full run takes minutes; on two CPU cores, hours.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "tests")]   # tests/tiny_models.py: the CLIP-L's seeded values

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nets  # noqa: E402
import shapes_data as S  # noqa: E402

STREAM_A, STREAM_B, STREAM_EVAL = 1_000_000, 2_000_000, 3_000_000   # seed streams: batch i uses stream + i
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)   # verifiers/preprocess.py: what CLIPScore normalises with
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def log(*a):
    print(*a, flush=True)


def sd15_alphas_cumprod() -> torch.Tensor:
    """comfy.model_sampling.ModelSamplingDiscrete for SD1.5: 'linear' betas (sqrt-spaced) 0.00085..0.012."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


class EMA:
    def __init__(self, module, decay):
        self.module, self.decay = module, decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, step):
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def state(self):
        return {k: v.clone() for k, v in self.shadow.items()}


def fit_steps(name: str, i: int, t0: float, steps: int, seconds) -> int:
    """A stage's step count, cut after its first 10 steps to what fits in ``seconds`` (None: as asked)."""
    if seconds and i == 10:
        fit = max(11, int(seconds / ((time.time() - t0) / 10)))
        if fit < steps:
            log(f"  {name}: {steps} steps would take longer than {seconds:.0f} s, training {fit}")
            return fit
    return steps


def cosine_lr(opt, step, total, peak, warmup):
    lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
    for group in opt.param_groups:
        group["lr"] = lr


# --- data --------------------------------------------------------------------------------------------------------------
def batch(stream: int, i: int, n: int, device):
    x, specs = S.make_batch(n, seed=stream + i, device=device)
    cap = torch.tensor([S.INDEX[s.caption] for s in specs], device=device)
    return x, specs, cap


def normalize(x01):
    m = torch.tensor(OPENAI_MEAN, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(OPENAI_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s


# --- stages --------------------------------------------------------------------------------------------------------------
class TAESD(torch.nn.Module):
    """The trained parts of ComfyUI's TAESD: encoder (image in [0, 1] -> latent) and decoder (latent -> image)."""

    def __init__(self):
        super().__init__()
        self.taesd_encoder = nets.narrow_taesd("taesd_encoder.")
        self.taesd_decoder = nets.narrow_taesd("taesd_decoder.")


def train_vae(steps, device, bs=128, seconds=None):
    torch.manual_seed(11)
    taesd = TAESD().to(device)
    enc, dec = taesd.taesd_encoder, taesd.taesd_decoder
    opt = torch.optim.Adam(taesd.parameters(), lr=1e-3)
    g = torch.Generator(device=device).manual_seed(13)
    t0 = time.time()
    i = 0
    while i < steps:
        steps = fit_steps("vae", i, t0, steps, seconds)
        cosine_lr(opt, i, steps, 1e-3, max(1, steps // 50))
        x, _, _ = batch(STREAM_A, i, bs, device)
        z = enc(x)
        std = 0.15 * torch.rand(bs, 1, 1, 1, device=device, generator=g)
        rec = dec(z + std * torch.randn(z.shape, device=device, generator=g))
        m, s = z.mean((0, 2, 3)), z.std((0, 2, 3))
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + 0.1 * (m.pow(2).mean() + (s - 1).pow(2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % max(1, steps // 5) == 0:
            log(f"  vae {i + 1}/{steps}: mse {rec_loss.item():.5f}, latent mean {m.abs().max().item():.3f}, "
                f"std {s.min().item():.3f}..{s.max().item():.3f} ({time.time() - t0:.0f} s)")
        i += 1
    taesd.eval().requires_grad_(False)
    with torch.no_grad():
        x, _, _ = batch(STREAM_EVAL, 0, 256 if bs >= 128 else 16, device)
        z = enc(x)
        psnr = -10 * math.log10(F.mse_loss(dec(z).clamp(0, 1), x).item())
    stats = {"steps": steps, "mse": rec_loss.item(), "psnr_db": round(psnr, 2), "latent_mean": z.mean((0, 2, 3)).tolist(),
             "latent_std": z.std((0, 2, 3)).tolist()}
    log(f"  vae: held-out PSNR {psnr:.1f} dB, latent std {[round(v, 2) for v in stats['latent_std']]}")
    return taesd, stats


def text_contexts(tokens_file, device):
    """The frozen CLIP-L's 77 x 768 context of every caption (row i = S.CAPTIONS[i]) and of the empty prompt
    (last row), as ComfyUI's SD1 CLIPTextEncode computes it from the checkpoint (layer 'last', final LayerNorm):
    with zero output projections every layer passes its input through, so the context is the final LayerNorm of
    token embedding + position embedding."""
    with open(tokens_file) as f:
        toks = json.load(f)
    assert toks["captions"] == list(S.CAPTIONS) + [""], "caption_tokens.json is for another caption list"
    t = nets.clip_embeddings()                                     # fp16, as the checkpoint stores them
    ids = torch.tensor([row + [toks["pad"]] * (77 - len(row)) for row in toks["tokens"]])
    x = t["token"].float()[ids] + t["position"].float()[None]
    ctx = F.layer_norm(x, (768,), t["norm_weight"].float(), t["norm_bias"].float(), 1e-5)
    fingerprint = nets.clip_fingerprint(t)
    log(f"  text: {ctx.shape[0]} contexts, CLIP-L fingerprint {fingerprint}")
    return ctx.to(device), fingerprint


def vae_roundtrip(taesd, x, g, max_noise):
    with torch.no_grad():
        z = taesd.taesd_encoder(x)
        s = max_noise * torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=g)
        return taesd.taesd_decoder(z + s * torch.randn(z.shape, device=x.device, generator=g)).clamp(0, 1)


def train_unet(taesd, ctx, steps, device, bs=256, lr=5e-4, seconds=None):
    torch.manual_seed(21)
    unet = nets.NarrowUNet()
    with torch.no_grad():   # as SD's UNet: the residual branches' and the output's last layers start at zero
        for name, p in unet.named_parameters():
            if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
                p.zero_()
    unet = unet.to(device)
    n_train = sum(p.numel() for p in unet.parameters())
    log(f"  unet: {n_train / 1e6:.2f} M parameters trained (of the 16.2 M of its SD1.5 layout)")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(unet, 0.999)
    ac = sd15_alphas_cumprod().to(device)
    g = torch.Generator(device=device).manual_seed(23)
    empty = ctx.shape[0] - 1
    use_amp = device.type == "cuda"
    t0 = time.time()
    run = 0.0
    half_state = None
    i = 0
    while i < steps:
        steps = fit_steps("unet", i, t0, steps, seconds)
        cosine_lr(opt, i, steps, lr, max(1, steps // 40))
        x, _, cap = batch(STREAM_A, 10_000_000 + i, bs, device)
        with torch.no_grad():
            x0 = taesd.taesd_encoder(x)
        drop = torch.rand(bs, device=device, generator=g) < 0.1
        uniq, rows = torch.unique(torch.where(drop, torch.full_like(cap, empty), cap), return_inverse=True)
        t = torch.randint(0, 1000, (bs,), device=device, generator=g)
        eps = torch.randn(x0.shape, device=device, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = unet(xt, t.float(), ctx[uniq], rows)
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(i)
        if i + 1 == steps // 2:
            half_state = ema.state()     # the half-trained model, kept for comparison (a weaker one)
        run = loss.item() if i == 0 else 0.98 * run + 0.02 * loss.item()
        if (i + 1) % max(1, steps // 10) == 0:
            log(f"  unet {i + 1}/{steps}: loss {run:.4f} ({time.time() - t0:.0f} s)")
        i += 1
    unet.load_state_dict(ema.state())
    half_state = half_state or ema.state()
    unet.eval().requires_grad_(False)
    return unet, half_state, {"final_loss": run, "trained_params": n_train, "steps": steps}


def open_clip_model():
    import open_clip
    from open_clip import factory
    factory._MODEL_CONFIGS["demo_shapes_verifier"] = nets.VERIFIER_CONFIG
    torch.manual_seed(31)
    model = open_clip.create_model("demo_shapes_verifier", pretrained=None)
    tok = open_clip.get_tokenizer("demo_shapes_verifier")
    return model, tok


def train_verifier(taesd, steps, device, bs=256, lr=5e-4, seconds=None):
    model, tok = open_clip_model()
    tokens = tok(list(S.CAPTIONS)).to(device)            # 528 x 16
    used = torch.unique(tokens.cpu())
    with torch.no_grad():
        table = model.token_embedding.weight
        keep = torch.zeros(table.shape[0], dtype=torch.bool)
        keep[used] = True
        table[~keep] = 0
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    g = torch.Generator(device=device).manual_seed(33)
    t0 = time.time()
    i = 0
    while i < steps:
        steps = fit_steps("verifier", i, t0, steps, seconds)
        cosine_lr(opt, i, steps, lr, max(1, steps // 20))
        x, _, cap = batch(STREAM_A, 20_000_000 + i, bs, device)
        half = bs // 2
        x = torch.cat([x[:half], vae_roundtrip(taesd, x[half:], g, 0.6)])
        img = F.normalize(model.encode_image(normalize(x)), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        loss_i = F.cross_entropy(scale * img @ txt.T, cap)
        same = (cap[:, None] == cap[None, :]).float()
        logits_t = scale * txt[cap] @ img.T
        loss_t = -(same / same.sum(1, keepdim=True) * logits_t.log_softmax(1)).sum(1).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % max(1, steps // 5) == 0:
            log(f"  verifier {i + 1}/{steps}: loss {loss.item():.3f}, scale {scale.item():.1f} "
                f"({time.time() - t0:.0f} s)")
        i += 1
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok, used, steps


def train_judge(taesd, steps, device, bs=256, lr=1e-3, seconds=None):
    torch.manual_seed(41)
    judge = nets.Judge().to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator(device=device).manual_seed(43)
    t0 = time.time()
    i = 0
    while i < steps:
        steps = fit_steps("judge", i, t0, steps, seconds)
        cosine_lr(opt, i, steps, lr, max(1, steps // 20))
        x, specs, _ = batch(STREAM_B, i, bs, device)
        y = S.labels(specs).to(device)
        half = bs // 2
        x = torch.cat([x[:half], vae_roundtrip(taesd, x[half:], g, 0.6)])
        loss = sum(F.cross_entropy(h, y[:, k], ignore_index=-1) for k, h in enumerate(judge(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % max(1, steps // 5) == 0:
            log(f"  judge {i + 1}/{steps}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
        i += 1
    judge.eval()
    for p in judge.parameters():
        p.requires_grad_(False)
    return judge, steps


# --- ComfyUI's KSampler arithmetic (for the check) ----------------------------------------------------------------------
class Sampler:
    """comfy.model_sampling.ModelSamplingDiscrete (EPS) + the 'normal' scheduler + k-diffusion's euler, with CFG."""

    def __init__(self, unet, ctx, device):
        self.unet, self.ctx, self.device = unet, ctx, device
        ac = sd15_alphas_cumprod()
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma(self, t: float) -> float:
        lo, hi = int(math.floor(t)), int(math.ceil(t))
        w = t - lo
        return math.exp((1 - w) * self.log_sigmas[lo].item() + w * self.log_sigmas[hi].item())

    def timestep(self, sigma: float) -> int:
        return int((math.log(sigma) - self.log_sigmas).abs().argmin())

    def schedule(self, steps):
        ts = torch.linspace(999, 0, steps)
        return [self.sigma(float(t)) for t in ts] + [0.0]

    @torch.no_grad()
    def eps(self, x, sigma, cap, cfg):
        t = torch.full((x.shape[0],), float(self.timestep(sigma)), device=self.device)
        xin = x / math.sqrt(sigma ** 2 + 1)
        e = self.unet(xin, t, self.ctx[cap])
        if cfg != 1.0:
            u = self.unet(xin, t, self.ctx[torch.full_like(cap, self.ctx.shape[0] - 1)])
            e = u + cfg * (e - u)
        return e

    @torch.no_grad()
    def sample(self, noise, cap, steps, cfg):
        sig = self.schedule(steps)
        x = noise * math.sqrt(1 + sig[0] ** 2)
        for i in range(steps):
            den = x - sig[i] * self.eps(x, sig[i], cap, cfg)
            x = x + (x - den) / sig[i] * (sig[i + 1] - sig[i])
        return x


@torch.no_grad()
def check(taesd, unet, ctx, verifier, vtok, judge, device, n_prompts=256, k=8,
          settings=((4, 1.0), (6, 1.0), (8, 1.0), (12, 1.0), (6, 3.0), (8, 3.0))):
    x, specs, cap = batch(STREAM_EVAL, 1, 8 * n_prompts, device)
    res = {"judge_on_clean": float(torch.stack([S.matches(p[None], s)[0] for p, s in
                                                zip(judge.predict(x).cpu(), specs)]).float().mean())}
    g = torch.Generator(device=device).manual_seed(51)
    res["judge_on_vae"] = float(torch.stack([S.matches(p[None], s)[0] for p, s in
                                             zip(judge.predict(vae_roundtrip(taesd, x, g, 0.0)).cpu(), specs)]).float().mean())
    txt = F.normalize(verifier.encode_text(vtok(list(S.CAPTIONS)).to(device)), dim=-1)
    img = F.normalize(verifier.encode_image(normalize(x)), dim=-1)
    res["verifier_top1_on_clean"] = float(((img @ txt.T).argmax(1) == cap).float().mean())
    log(f"  check: judge on clean {res['judge_on_clean']:.3f}, through the VAE {res['judge_on_vae']:.3f}; "
        f"verifier caption top-1 {res['verifier_top1_on_clean']:.3f}")
    _, pspecs, pcap = batch(STREAM_EVAL, 2, n_prompts, device)
    sampler = Sampler(unet, ctx, device)
    noise = torch.randn((n_prompts * k, 4, nets.LATENT, nets.LATENT), device=device, generator=g)
    capk = pcap.repeat_interleave(k)
    res["settings"] = {}
    grids = {}
    for steps, cfg in settings:
        lat = torch.cat([sampler.sample(noise[i:i + 512], capk[i:i + 512], steps, cfg) for i in range(0, len(capk), 512)])
        imgs = taesd.taesd_decoder(lat).clamp(0, 1)
        pred = judge.predict(imgs).cpu()
        ok = torch.stack([S.matches(pred[j][None], pspecs[j // k])[0] for j in range(len(capk))]).view(n_prompts, k)
        score = (F.normalize(verifier.encode_image(normalize(imgs)), dim=-1) * txt[capk]).sum(1).view(n_prompts, k)
        best = score.argmax(1).cpu()
        r = {"one_sample": float(ok.float().mean()), "first_sample": float(ok[:, 0].float().mean()),
             "verifier_best_of_8": float(ok[torch.arange(n_prompts), best].float().mean()),
             "oracle_best_of_8": float(ok.any(1).float().mean())}
        d = (ok[torch.arange(n_prompts), best].float() - ok.float().mean(1))
        r["gain_over_mean_se"] = float(d.std() / math.sqrt(n_prompts))
        res["settings"][f"steps{steps}_cfg{cfg:g}"] = r
        grids[(steps, cfg)] = imgs[: 8 * k]
        log(f"  check steps {steps} cfg {cfg:g}: one sample {r['one_sample']:.3f}, verifier's best of {k} "
            f"{r['verifier_best_of_8']:.3f} (+-{r['gain_over_mean_se']:.3f}), oracle {r['oracle_best_of_8']:.3f}")
    return res, grids, [s.caption for s in pspecs[:8]]


def save_grid(grids, captions, path, k=8):
    from PIL import Image
    rows = []
    for (steps, cfg), imgs in grids.items():
        rows.append(imgs.view(8, k, 3, 64, 64).permute(0, 3, 1, 4, 2).reshape(8 * 64, k * 64, 3))
    sheet = torch.cat(rows, 1).cpu()
    Image.fromarray((sheet * 255).round().byte().numpy()).save(path)
    log("  samples.png rows: " + "; ".join(captions))
    log("  samples.png column blocks: " + ", ".join(f"steps {s} cfg {c:g}" for s, c in grids))


# --- export ---------------------------------------------------------------------------------------------------------------
def export(out_dir, taesd, unet, verifier, used, judge, provenance, unet_half=None, ship="half"):
    from safetensors.torch import save_file
    w = os.path.join(out_dir, "weights")
    os.makedirs(w, exist_ok=True)
    half = lambda d: {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in d.items()}  # noqa: E731
    # the narrow networks' state dicts are the trained parts (nets.pack of the full layout), keys as ComfyUI's
    final = unet.state_dict()
    shipped, other = (unet_half, final) if ship == "half" and unet_half is not None else (final, unet_half)
    save_file(half(shipped), os.path.join(w, "unet.safetensors"))
    if other is not None:
        save_file(half(other), os.path.join(w, "unet_other.safetensors"))
    save_file(half(taesd.state_dict()), os.path.join(w, "taesd.safetensors"))
    vs = {k: v for k, v in verifier.state_dict().items() if k != nets.TOKEN_TABLE}
    vs = half(vs)
    vs["token_rows.ids"] = used.to(torch.int64)
    table = verifier.state_dict()[nets.TOKEN_TABLE]
    vs["token_rows.values"] = table[used.to(table.device)].detach().cpu().to(torch.float16)
    save_file(vs, os.path.join(w, "verifier.safetensors"))
    save_file(half(judge.state_dict()), os.path.join(w, "judge.safetensors"))
    sizes = {f: os.path.getsize(os.path.join(w, f)) for f in sorted(os.listdir(w))}
    provenance["files_bytes"] = sizes
    with open(os.path.join(w, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=1, sort_keys=True)
    log(f"  wrote {w}: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (weights/ and samples.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", default=os.path.join(HERE, "caption_tokens.json"))
    p.add_argument("--quick", action="store_true", help="3 steps a stage, batches of 16: a smoke run of the script")
    p.add_argument("--commit", default=None, help="the repository commit to record (default: git rev-parse HEAD)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--unet-steps", type=int, default=3300)
    p.add_argument("--verifier-steps", type=int, default=1000)
    p.add_argument("--judge-steps", type=int, default=1000)
    p.add_argument("--seconds", default="",
                   help="time budgets per stage, e.g. vae=300,unet=600: a stage trains fewer steps if its steps "
                        "would take longer (measured on its first 10); the steps trained are recorded")
    p.add_argument("--batch", default="", help="batch sizes per stage, e.g. vae=32,unet=64 (defaults 128/256)")
    p.add_argument("--ship-unet", choices=("half", "final"), default="half",
                   help="which EMA snapshot becomes unet.safetensors: at half the UNet steps (the default: a weaker "
                        "model, so one sample is often wrong and search has headroom) or at the end")
    p.add_argument("--check-prompts", type=int, default=256, help="prompts of the final check (8 samples each)")
    p.add_argument("--check-settings", default="4:1,6:1,8:1,12:1,6:3,8:3", help="steps:cfg pairs of the check")
    a = p.parse_args(argv)
    steps = {k: 3 if a.quick else getattr(a, k + "_steps") for k in ("vae", "unet", "verifier", "judge")}
    secs = {k: float(v) for k, v in (kv.split("=") for kv in a.seconds.split(",") if kv)}
    bsz = {"vae": 128, "unet": 256, "verifier": 256, "judge": 256}
    bsz.update({k: int(v) for k, v in (kv.split("=") for kv in a.batch.split(",") if kv)})
    if a.quick:
        bsz = {k: 16 for k in bsz}
    device = torch.device(a.device)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.time()
    log(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()}),"
        f" torch {torch.__version__}, steps {steps}")
    timings = {}

    def stage(name, fn):
        t = time.time()
        r = fn()
        timings[name] = round(time.time() - t, 1)
        return r

    taesd, vae_stats = stage("vae", lambda: train_vae(steps["vae"], device, bsz["vae"], secs.get("vae")))
    steps["vae"] = vae_stats["steps"]
    verifier, vtok, used, steps["verifier"] = stage("verifier", lambda: train_verifier(
        taesd, steps["verifier"], device, bsz["verifier"], seconds=secs.get("verifier")))
    judge, steps["judge"] = stage("judge", lambda: train_judge(taesd, steps["judge"], device, bsz["judge"],
                                                               seconds=secs.get("judge")))
    ctx, fingerprint = stage("text", lambda: text_contexts(a.tokens, device))
    unet, unet_half, unet_stats = stage("unet", lambda: train_unet(taesd, ctx, steps["unet"], device, bsz["unet"],
                                                                   seconds=secs.get("unet")))
    steps["unet"] = unet_stats["steps"]
    flags = " ".join(f"--{k}-steps {steps[k]}" for k in ("vae", "unet", "verifier", "judge"))
    flags += " --batch " + ",".join(f"{k}={v}" for k, v in bsz.items()) + f" --ship-unet {a.ship_unet}"
    prov = {
        "script": "tools/demo_model/train.py",
        "command": f"python tools/demo_model/train.py --out <dir> --device {device.type} {flags}"
                   + (" --quick" if a.quick else ""),
        "commit": a.commit or git_commit(), "steps": steps, "batch": bsz, "quick": a.quick,
        "seeds": {"vae_images": STREAM_A, "unet_images": STREAM_A + 10_000_000,
                  "verifier_images": STREAM_A + 20_000_000, "judge_images": STREAM_B, "check_images": STREAM_EVAL,
                  "init": {"vae": [11, 12], "unet": 21, "verifier": 31, "judge": 41}, "clip_l": nets.CLIP_SEED},
        "data": f"tools/demo_model/shapes_data.py: {S.ascii_summary()}; 64 x 64; training batch i of a stage is "
                "make_batch(n, seed=<stage seed> + i)",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__, "python": platform.python_version(),
        "clip_l_fingerprint": fingerprint, "widths": {"unet": [nets.WIDTH, nets.TIME_WIDTH, nets.FF_WIDTH],
                                                      "taesd_decoder": nets.TAESD_DECODER,
                                                      "taesd_encoder": nets.TAESD_ENCODER},
        "vae": vae_stats, "unet": unet_stats, "seconds": timings,
        "shipped_unet": a.ship_unet,
    }
    quick = dict(n_prompts=8, settings=((4, 1.0),)) if a.quick else dict(
        n_prompts=a.check_prompts, settings=tuple((int(x.split(":")[0]), float(x.split(":")[1]))
                                                  for x in a.check_settings.split(",")))
    # the weights first: a check that runs out of time loses nothing
    export(a.out, taesd, unet, verifier, used, judge, prov, unet_half, a.ship_unet)
    res, grids, caps = stage("check", lambda: check(taesd, unet, ctx, verifier, vtok, judge, device, **quick))
    save_grid(grids, caps, os.path.join(a.out, "samples.png"))
    full_state = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(unet_half)
    log("  the half-trained UNet:")
    res_half, _, _ = check(taesd, unet, ctx, verifier, vtok, judge, device, **quick)
    unet.load_state_dict(full_state)
    prov.update(check=res, check_half_trained=res_half, seconds=timings, total_seconds=round(time.time() - t0, 1))
    export(a.out, taesd, unet, verifier, used, judge, prov, unet_half, a.ship_unet)
    log(f"done in {time.time() - t0:.0f} s: {json.dumps(timings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
