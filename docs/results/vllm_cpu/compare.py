import json, sys
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
from scipy.stats import ks_2samp
def load(out):
    out = Path(out)
    s = json.loads((out / "summary.json").read_text())
    rows = [r for f in sorted((out / "data").glob("chunk-*.parquet")) for r in pq.read_table(f).to_pylist()]
    return s, rows
sv, rv = load(sys.argv[1]); st, rt = load(sys.argv[2])
for name, s, rows in (("vllm", sv, rv), ("transformers", st, rt)):
    ok = all(len(r["answers"]) == len(r["answer_ids"]) == len(r["ref_logps"]) == len(r["rewards"]) == 4 for r in rows)
    rew = np.array([x for r in rows for x in r["rewards"]])
    print(f"{name}: complete={s['complete']} records={s['records']} kept={s['kept']} lists_of_4={ok} mean_reward={rew.mean():.4f} sd={rew.std():.4f} n={rew.size} mean_ref_logp={np.mean([x for r in rows for x in r['ref_logps']]):.3f}")
a = np.array([x for r in rv for x in r["rewards"]]); b = np.array([x for r in rt for x in r["rewards"]])
print("ks_2samp rewards vllm vs transformers:", ks_2samp(a, b))
rng = np.random.default_rng(0)
# permutation test on the mean reward, permuting whole records (answers of one list are not independent)
ma = np.array([np.mean(r["rewards"]) for r in rv]); mb = np.array([np.mean(r["rewards"]) for r in rt])
obs = ma.mean() - mb.mean(); pooled = np.concatenate([ma, mb]); k = len(ma)
perm = [ (lambda p: p[:k].mean() - p[k:].mean())(rng.permutation(pooled)) for _ in range(10000)]
print(f"permutation test (record means) diff={obs:.4f} p={np.mean(np.abs(perm) >= abs(obs)):.4f}")
