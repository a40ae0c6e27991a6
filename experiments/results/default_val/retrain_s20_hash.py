"""sha256 of each retrained EMA seed's best.pt against checkpoints.sha256 (ema_temperature_rule.txt,
step 2). On a mismatch it also hashes the checkpoint with the train_config's dataset.path written
the other way (relative/absolute), re-saved in memory: that string is the one input the earlier
runs' record does not fix. Exit 0 when all three match, 3 otherwise. Run from the repository root.
"""

import hashlib
import io
import sys
from pathlib import Path

import torch

want = {}
for line in Path("experiments/results/default_val/checkpoints.sha256").read_text().splitlines():
    digest, path = line.split()
    want[path] = digest
ok = True
for s in range(3):
    p = f"outputs/default_val/rid/ema2_seed{s}/checkpoints/best.pt"
    h = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    same = h == want[p]
    msg = f"{p}: {h} {'MATCH' if same else 'differs from ' + want[p]}"
    if not same:
        ck = torch.load(p, weights_only=True)
        path = ck["train_config"]["dataset.path"]
        alt = path.replace("/work/main/", "") if path.startswith("/") else "/work/main/" + path
        ck["train_config"]["dataset.path"] = alt
        buf = io.BytesIO()
        torch.save(ck, buf)
        h2 = hashlib.sha256(buf.getvalue()).hexdigest()
        msg += f"; with dataset.path={alt}: {h2} {'MATCH' if h2 == want[p] else 'differs'}"
        same = h2 == want[p]
    ok &= same
    print(msg, flush=True)
print("ALL MATCH" if ok else "NOT ALL MATCH")
sys.exit(0 if ok else 3)
