#!/usr/bin/env python3
"""A quick probe of a UNet checkpoint during training (diffusers' pipeline, not the evaluation protocol).

    CK=WORK/unet-c/checkpoint.pt G=4 python3 tools/shapes/probe.py OUT_DIR

(With OUT_DIR it has the judge, tools/shapes/model/judge, classify the pictures and prints the counts that
docs/default-model.md tabulates.)

Loads the checkpoint's EMA UNet with the committed E and the committed autoencoder (or AE=DIR), writes six sample prompts side by side (seeds 500-505) and, with OUT_DIR,
96 pictures — every (category, colour) pair once with the plain prompt (seeds 600-647) and once with a
descriptive prompt (seeds 700-747) — with a labels.jsonl the judge reads. These seeds are disjoint from the
evaluation seeds (1000-1003); they were used to choose settings (guidance) and to decide on Min-SNR.
"""
import os, sys, torch, numpy as np
from PIL import Image
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MODEL = os.path.join(HERE, 'model', 'pipeline')
from diffusers import StableDiffusionPipeline, UNet2DConditionModel, AutoencoderTiny, DPMSolverMultistepScheduler
from transformers import CLIPTextModel, CLIPTokenizerFast
import train_unet
torch.set_num_threads(1)
ck = torch.load(os.environ['CK'], map_location='cpu', weights_only=False)
print('step', ck['step'])
te = CLIPTextModel.from_pretrained(os.path.join(MODEL, 'text_encoder')).float()
unet = train_unet.make_unet(64); unet.load_state_dict(ck['ema'])
vae = AutoencoderTiny.from_pretrained(os.environ.get('AE', os.path.join(MODEL, 'vae'))).float()
tok = CLIPTokenizerFast.from_pretrained(os.path.join(MODEL, 'tokenizer'))
sch = DPMSolverMultistepScheduler.from_pretrained(os.path.join(MODEL, 'scheduler'))
pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sch, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
prompts = ["a blue heart with stripes", "a red star", "a green circle covered in polka dots", "a yellow square drawn only by its contour", "a purple triangle glowing on a dark background", "an orange hexagon with a checkerboard pattern"]
ims = []
for i, p in enumerate(prompts):
    g = torch.Generator().manual_seed(500 + i)
    ims.append(pipe(p, num_inference_steps=15, guidance_scale=4, height=128, width=128, generator=g, output_type='np').images[0])
grid = np.concatenate([(np.clip(im, 0, 1) * 255).astype(np.uint8) for im in ims], axis=1)
Image.fromarray(grid).save(f'./probe-step{ck["step"]}.png')

if len(sys.argv) > 1:
    import itertools
    import json
    import subprocess
    from domain import CATEGORIES, COLORS, STYLES, plain_prompt, descriptive_prompt
    out = sys.argv[1]; os.makedirs(out, exist_ok=True)
    rows = []
    for i, (k, c) in enumerate(itertools.product(CATEGORIES, COLORS)):
        st = STYLES[i % 6]
        rows.append(dict(kind='plain', prompt=plain_prompt(k, c), category=k, color=c, style=None, seed=600 + i))
        rows.append(dict(kind='descriptive', prompt=descriptive_prompt(k, c, st), category=k, color=c, style=st, seed=700 + i))
    for j, r in enumerate(rows):
        g = torch.Generator().manual_seed(r['seed'])
        im = pipe(r['prompt'], num_inference_steps=15, guidance_scale=float(os.environ.get('G', 4)), height=128, width=128, generator=g, output_type='np').images[0]
        r['file'] = f'{j:04d}.png'
        Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)).save(os.path.join(out, r['file']))
    with open(os.path.join(out, 'labels.jsonl'), 'w') as f:
        for r in rows: f.write(json.dumps(r) + '\n')
    subprocess.run([sys.executable, os.path.join(HERE, 'judge.py'), 'classify', '--judge', os.path.join(HERE, 'model', 'judge'),
                    '--folder', out], check=True)
    judged = [json.loads(l) for l in open(os.path.join(out, 'judged.jsonl'))]
    for kind in ('plain', 'descriptive'):
        sel = [r for r in judged if r['kind'] == kind]
        print(kind, {h: f"{sum(r[h] == r['pred_' + h] for r in sel if r.get(h))}/{sum(1 for r in sel if r.get(h))}"
                     for h in ('category', 'color', 'style') if any(r.get(h) for r in sel)})
