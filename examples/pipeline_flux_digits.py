"""A diffusers FluxPipeline on the trained flux_digits reference model, with and without speca.

    python examples/pipeline_flux_digits.py [--tau0 0.1] [--steps 50] [--out pipeline_digits.png]

The pipeline is diffusers' own ``FluxPipeline``: shifted flow-matching
sigmas, true classifier-free guidance (the null-label embedding as the
negative prompt, two transformer calls per step), prompt embeddings passed in
directly (the label encoder stands in for the text encoders), no VAE (the
model works on 2x2-packed pixels).  ``speca_compile.apply(pipe)`` is the only
change; the pipeline is then called twice to show repeated calls agree, with
a progress bar counting full vs speculative sample-steps.
"""

import argparse
import time

import torch
from tqdm import tqdm

import speca_compile
from speca_compile.bench.quality import image_psnr
from speca_compile.reference import judge, store
from speca_compile.reference.digits import to_unit
from speca_compile.reference.models import unpack

from sample_digits import save_grid

SIDE = 128   # FluxPipeline without a VAE assumes 8x downsampling: 128 px -> 16x16 latents -> 8x8 tokens


def build_pipeline(ref):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=ref.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, ref, labels, steps: int) -> torch.Tensor:
    """Digits for ``labels`` (one seed per image), as [B, 1, 16, 16] images."""
    n = len(labels)
    with torch.no_grad():
        tokens, pooled = ref.label_encoder(torch.cat([labels, torch.full_like(labels, 10)]))
    latents = pipe(prompt=None, prompt_embeds=tokens[:n], pooled_prompt_embeds=pooled[:n],
                   negative_prompt_embeds=tokens[n:], negative_pooled_prompt_embeds=pooled[n:],
                   true_cfg_scale=ref.guidance, num_inference_steps=steps, height=SIDE, width=SIDE,
                   generator=[torch.Generator().manual_seed(i) for i in range(n)],
                   output_type="latent", return_dict=False)[0]
    return unpack(latents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tau0", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="pipeline_digits.png")
    args = parser.parse_args()

    ref = store.load("flux_digits")
    pipe = build_pipeline(ref)
    labels = torch.arange(10)

    start = time.perf_counter()
    plain = generate(pipe, ref, labels, args.steps)
    plain_s = time.perf_counter() - start

    bar = tqdm(desc="speca", unit="step", leave=False)

    def progress(step):   # called by the runtime after every transformer call
        bar.update(1)
        bar.set_postfix_str(f"step {step['step']}: {step['decisions']}  full {step['full']}/{step['sample_steps']}")

    speca_compile.apply(pipe, tau0=args.tau0, progress=progress)
    first = generate(pipe, ref, labels, args.steps)          # compiles
    start = time.perf_counter()
    again = generate(pipe, ref, labels, args.steps)
    speca_s = time.perf_counter() - start
    bar.close()

    last = speca_compile.stats(pipe)["last_call"]
    j = store.load_judge()
    print(f"repeated call identical: {torch.equal(first, again)}")
    print(f"full sample-steps in the last call: {last['full']} of {last['sample_steps']} "
          f"({last['trajectories']} trajectories: the CFG branches)")
    print(f"PSNR vs the plain pipeline: {image_psnr(to_unit(again), to_unit(plain)):.1f} dB")
    print(f"judge accuracy: plain {judge.accuracy(j, plain, labels):.0%}, "
          f"speca {judge.accuracy(j, again, labels):.0%}")
    print(f"seconds per call: plain {plain_s:.2f}, speca {speca_s:.2f} ({plain_s / speca_s:.2f}x)")
    speca_compile.remove(pipe)
    save_grid({"FluxPipeline": to_unit(plain), "+ speca": to_unit(again)}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
