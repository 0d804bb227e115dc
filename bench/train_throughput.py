"""Training throughput of vqgen's unified text+image decoder vs DALLE-pytorch, on this machine.

Both train the same task: one causal stream of text tokens then image codes (the codes are given
directly, so neither runs an image tokenizer), cross-entropy on both parts, AdamW, fp32, the same
batch, sequence length and thread count, and the same parameter count (vqgen's MLP width is chosen
to match DALLE-pytorch's count; both are printed). DALLE-pytorch runs in its own virtual
environment (see bench/README.md) as a subprocess; the two alternate for ``--rounds`` rounds and
the median of each is compared, so a change in machine load hits both. With one thread (the
default) both sides time CPU seconds of their process (``time.process_time``: the wall time on an
idle core, and independent of the other jobs on a shared machine); with ``--threads`` > 1, wall
seconds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_throughput.py --peer-python /work/peers/dalle/bin/python

Final line: ``train_vs_dalle_pytorch=<vqgen tokens/s ÷ DALLE-pytorch tokens/s>x``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER_WORKER = r'''
import json, sys, time, types
import torch
import pytorch_lightning.utilities as plu
# taming (imported by dalle_pytorch) wants a module that newer Lightning moved
shim = types.ModuleType("pytorch_lightning.utilities.distributed")
shim.rank_zero_only = plu.rank_zero_only
sys.modules["pytorch_lightning.utilities.distributed"] = shim
from dalle_pytorch import DALLE, DiscreteVAE

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
clock = time.process_time if a["threads"] == 1 else time.perf_counter
torch.manual_seed(0)
vae = DiscreteVAE(image_size=a["image_size"], num_layers=a["vae_layers"], num_tokens=a["codebook"],
                  codebook_dim=64, hidden_dim=16)
model = DALLE(dim=a["dim"], vae=vae, num_text_tokens=a["text_vocab"], text_seq_len=a["text_len"],
              depth=a["depth"], heads=a["heads"], dim_head=a["dim"] // a["heads"])
params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vae."))
if a.get("count_only"):
    print(json.dumps({"params": params, "image_seq_len": model.image_seq_len})); sys.exit()
opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("vae.")], lr=1e-4)
text = torch.randint(1, a["text_vocab"], (a["batch"], a["text_len"]))
codes = torch.randint(0, a["codebook"], (a["batch"], model.image_seq_len))
def step():
    loss = model(text, codes, return_loss=True)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(a["warmup"]):
    step()
t = clock()
for _ in range(a["steps"]):
    step()
dt = clock() - t
print(json.dumps({"params": params, "tokens_per_s": a["steps"] * a["batch"] * (a["text_len"] + model.image_seq_len) / dt}))
'''


def vqgen_model(args, mlp_dim: int):
    import torch

    from vqgen.transformer import TextConfig, TransformerConfig, build_model

    side = args.image_size // 2 ** args.vae_layers
    cfg = TransformerConfig(family="unified", dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=mlp_dim,
                            dropout=0.0, grid=(side, side), codebook_size=args.codebook,
                            text=TextConfig(vocab_size=args.text_vocab, max_len=args.text_len))
    torch.manual_seed(0)
    return build_model(cfg)


def matched_mlp_dim(args, target: int) -> tuple[int, int]:
    """The MLP width (multiple of 8) whose parameter count is closest to ``target``."""
    import torch

    best = None
    with torch.device("meta"):
        for mlp in range(8, 16 * args.dim + 1, 8):
            n = sum(p.numel() for p in vqgen_model(args, mlp).parameters())
            if best is None or abs(n - target) < abs(best[1] - target):
                best = (mlp, n)
    return best


def run_vqgen(args, mlp_dim: int) -> float:
    import torch

    from vqgen.transformer import Condition

    torch.set_num_threads(args.threads)
    model = vqgen_model(args, mlp_dim).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    n = model.image_seq_len
    text = torch.randint(4, args.text_vocab, (args.batch, args.text_len), generator=g)
    cond = Condition(text_ids=text, text_mask=torch.ones_like(text, dtype=torch.bool))
    codes = torch.randint(0, args.codebook, (args.batch, n), generator=g)

    def step():
        loss, _ = model.compute_loss(codes, cond)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    clock = time.process_time if args.threads == 1 else time.perf_counter
    for _ in range(args.warmup):
        step()
    t = clock()
    for _ in range(args.steps):
        step()
    return args.steps * args.batch * (args.text_len + n) / (clock() - t)


def run_peer(args, worker: Path, count_only: bool = False) -> dict:
    payload = {k: getattr(args, k) for k in ("dim", "depth", "heads", "text_len", "text_vocab", "image_size",
                                             "vae_layers", "codebook", "batch", "threads", "warmup", "steps")}
    payload["count_only"] = count_only
    proc = subprocess.run([args.peer_python, str(worker), json.dumps(payload)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"DALLE-pytorch worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", default="/work/peers/dalle/bin/python", help="python of the DALLE-pytorch venv")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--text-vocab", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=64, help="DALLE-pytorch's VAE image size (sets the code grid)")
    p.add_argument("--vae-layers", type=int, default=2, help="the grid side is image_size / 2**vae_layers")
    p.add_argument("--codebook", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not Path(args.peer_python).is_file():
        sys.exit(f"no DALLE-pytorch environment at {args.peer_python}: see bench/README.md")

    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "dalle_worker.py"
        worker.write_text(PEER_WORKER)
        peer_params = run_peer(args, worker, count_only=True)["params"]
        mlp_dim, ours_params = matched_mlp_dim(args, peer_params)
        side = args.image_size // 2 ** args.vae_layers
        print(f"params: vqgen {ours_params / 1e6:.2f}M (mlp_dim {mlp_dim}), DALLE-pytorch {peer_params / 1e6:.2f}M; "
              f"batch {args.batch}, {args.text_len} text + {side * side} image tokens, {args.threads} thread(s); "
              f"{'CPU' if args.threads == 1 else 'wall'} time", flush=True)
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(run_vqgen(args, mlp_dim))
            theirs.append(run_peer(args, worker)["tokens_per_s"])
            print(f"round {r + 1}: vqgen {ours[-1]:.0f} tokens/s, DALLE-pytorch {theirs[-1]:.0f} tokens/s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"median tokens/s: vqgen {a:.0f}, DALLE-pytorch {b:.0f}")
    print(f"train_vs_dalle_pytorch={a / b:.2f}x")


if __name__ == "__main__":
    main()
