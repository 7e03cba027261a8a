# On a machine with torch + transformers (the GPU host): the HF model's own router logits for the teacher-forced
# sequences of reference.json, in fp32 on the CPU. For every position and layer, the margin between the 2nd and
# the 3rd expert's router logit (top-2 routing: below rounding, a runtime may pick the other expert).
# python3 scripts/device/router-margins.py > router-margins.json
import json, sys, torch
from transformers import AutoModelForCausalLM
hf = 'test/fixtures/huozi-tiny/hf'
ref = json.load(open('test/fixtures/huozi-tiny/reference.json'))
model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32).eval()
out = []
for t in ref['teacher_forced']:
    ids = torch.tensor([t['ids']])
    with torch.no_grad():
        r = model(ids, output_router_logits=True)
    layers = []
    for rl in r.router_logits:  # [tokens, experts] per layer
        s = torch.sort(rl.float(), dim=-1, descending=True).values
        layers.append([round(float(m), 6) for m in (s[:, 1] - s[:, 2])])
    margins = [min(layers[l][p] for l in range(len(layers))) for p in range(len(t['ids']))]
    out.append({'layers': layers, 'min_margin': margins})
    worst = sorted(range(len(margins)), key=lambda p: margins[p])[:6]
    print('sequence', len(out) - 1, 'smallest 2nd-3rd router margins:', [(p, margins[p]) for p in worst], file=sys.stderr)
json.dump(out, sys.stdout)
