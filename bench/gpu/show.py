"""Compact table of headkv-bench / llama-bench JSON(L) results: python3 show.py FILE..."""
import json
import sys

for path in sys.argv[1:]:
    text = open(path).read().strip()
    if not text:
        continue
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    for r in rows:
        if "kv_method" in r:  # headkv-bench
            kv = r["kv_method"] + (f"/{r['kv_budget']:g}" if r.get("kv_budget") else "")
            kv += f" {r.get('type_k', 'f16')}/{r.get('type_v', 'f16')}"
            print(f"headkv {r['model_filename'].split('/')[-1]} {r['device']} {kv} {r['name']}: "
                  f"{r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} t/s, KV {r['kv_bytes'] / 2**20:.0f} MiB, "
                  f"peak GPU {r['peak_device_bytes'] / 2**30:.2f} GiB, roofline {r['roofline_fraction']}")
        else:  # llama-bench
            name = (f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}") + (
                f" @ d{r['n_depth']}" if r.get("n_depth") else "")
            kv = f" {r.get('type_k', 'f16')}/{r.get('type_v', 'f16')} fa {r.get('flash_attn', '?')}"
            print(f"llama.cpp {r['model_filename'].split('/')[-1]}{kv} {name}: {r['avg_ts']:.1f} ± {r['stddev_ts']:.1f} t/s")
