"""Train the judge and the two reference generators on the digits; writes ``examples/<name>/``.

    python -m speca_compile.reference.train digits_judge
    python -m speca_compile.reference.train dit_digits
    python -m speca_compile.reference.train flux_digits

Deterministic for a given seed on one machine (CPU, fixed thread count).
Generators keep an exponential moving average of their weights, which is
what is saved.  After training, the guidance scale is picked from a short
sweep (lowest digits-FD among scales whose samples the judge labels >= 90%
correct), and the figures go into ``config.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from speca_compile import sampling
from speca_compile.reference import digits, judge as judge_mod, models, store

GUIDANCE_SWEEP = (1.5, 2.0, 3.0, 4.0)


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random one-pixel translations (zero padding = background -1)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy:dy + digits.SIZE, dx:dx + digits.SIZE]


def train_judge(epochs: int = 40, seed: int = 0) -> Dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = digits.split("train")
    net = judge_mod.DigitsJudge()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in tqdm(range(epochs), desc="digits_judge", unit="epoch"):
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            x = _shift(images[idx], g) + 0.05 * torch.randn(images[idx].shape, generator=g)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    held_x, held_y = digits.split("held_out")
    acc = judge_mod.accuracy(net, held_x, held_y)
    config = {"held_out_accuracy": acc, "epochs": epochs, "seed": seed,
              "command": f"python -m speca_compile.reference.train digits_judge --seed {seed}"}
    store.save(store.JUDGE, net.state_dict(), config)
    return config


def _diffusion_loss(name, net, encoder, x0, labels, g):
    noise = torch.randn(x0.shape, generator=g)
    # classifier-free guidance dropout: 10% of labels become the null class
    drop = torch.rand(labels.shape, generator=g) < 0.1
    labels = torch.where(drop, torch.full_like(labels, models.NULL_CLASS), labels)
    if name == "dit_digits":
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        abar = sampling.alphas_cumprod()[t].float().view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        pred = net(xt, timestep=t.float(), class_labels=labels, return_dict=False)[0]
        return F.mse_loss(pred, noise)
    x0, noise = models.pack(x0), models.pack(noise)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=g)).view(-1, 1, 1)   # logit-normal
    xt = (1 - sigma) * x0 + sigma * noise
    tokens, pooled = encoder(labels)
    pred = net(xt, timestep=sigma.view(-1), encoder_hidden_states=tokens, pooled_projections=pooled,
               return_dict=False, **models.flux_ids())[0]
    return F.mse_loss(pred, noise - x0)


def _sample(ref, count: int, steps: int, seed: int = 0):
    extra = ref.make_inputs(count, seed)
    noise = torch.randn(ref.latent_shape(count), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = sampling.denoise(lambda x, t: ref.call(ref.model, x, t, extra), noise, steps, ref.kind)
    return ref.decode(out), extra["labels"]


def pick_guidance(name, net, encoder, steps: int = 50, count: int = 100) -> Dict:
    judge = store.load_judge()
    held_x, _ = digits.split("held_out")
    sweep: List[Dict] = []
    for scale in GUIDANCE_SWEEP:
        ref = (models.dit_reference(net, scale) if name == "dit_digits"
               else models.flux_reference(net, encoder, scale))
        images, labels = _sample(ref, count, steps)
        sweep.append({"guidance": scale, "accuracy": judge_mod.accuracy(judge, images, labels),
                      "digits_fd": judge_mod.frechet_distance(judge, images, held_x)})
        print(f"  guidance {scale}: accuracy {sweep[-1]['accuracy']:.3f}, digits-FD {sweep[-1]['digits_fd']:.2f}")
    good = [s for s in sweep if s["accuracy"] >= 0.9] or sweep
    return {"guidance": min(good, key=lambda s: s["digits_fd"])["guidance"], "guidance_sweep": sweep,
            "sweep_samples": count, "sweep_steps": steps}


def train_generator(name: str, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
                    ema_decay: float = 0.999, sweep_samples: int = 100) -> Dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = models.build_dit() if name == "dit_digits" else models.build_flux()
    encoder = models.LabelEncoder() if name == "flux_digits" else None
    params = list(net.parameters()) + (list(encoder.parameters()) if encoder else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    ema_net, ema_enc = copy.deepcopy(net).eval(), (copy.deepcopy(encoder).eval() if encoder else None)
    images, labels = digits.split("train")
    net.train()
    start, losses = time.time(), []
    bar = tqdm(range(steps), desc=name, unit="step")
    for step in bar:
        idx = torch.randint(0, len(labels), (batch,), generator=g)
        loss = _diffusion_loss(name, net, encoder, images[idx], labels[idx], g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for source, target in ((net, ema_net), (encoder, ema_enc)):
                if source is None:
                    continue
                for p, q in zip(source.parameters(), target.parameters()):
                    q.lerp_(p, 1 - decay)
        losses.append(float(loss))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    config = {"architecture": models.DIT_CONFIG if name == "dit_digits" else models.FLUX_CONFIG,
              "objective": "ddpm-epsilon" if name == "dit_digits" else "rectified-flow",
              "train_steps": steps, "batch": batch, "lr": lr, "seed": seed, "ema_decay": ema_decay,
              "final_loss": sum(losses[-200:]) / len(losses[-200:]), "train_seconds": time.time() - start,
              "threads": torch.get_num_threads(),
              "command": (f"python -m speca_compile.reference.train {name} --steps {steps} --batch {batch} "
                          f"--seed {seed} --sweep-samples {sweep_samples}")}
    config.update(pick_guidance(name, ema_net, ema_enc, count=sweep_samples))
    tensors = {f"transformer.{k}": v for k, v in ema_net.state_dict().items()}
    if ema_enc is not None:
        tensors.update({f"label_encoder.{k}": v for k, v in ema_enc.state_dict().items()})
    store.save(name, tensors, config)
    return config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speca_compile.reference.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=(store.JUDGE,) + store.NAMES)
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (generators)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (judge)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (generators)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-samples", type=int, default=100,
                        help="samples per guidance scale when picking the scale (generators)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.name == store.JUDGE:
        config = train_judge(args.epochs, args.seed)
    else:
        config = train_generator(args.name, args.steps, batch=args.batch, seed=args.seed,
                                  sweep_samples=args.sweep_samples)
    print({k: v for k, v in config.items() if k != "architecture"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
